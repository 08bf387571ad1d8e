"""torch.hub entrypoints: ``torch.hub.load(repo_or_dir, 'bh_resnet50', pretrained=False, **kwargs)``.

Each entrypoint forwards to ``timm.create_model`` (through ``bh_models.create_model``, which only adds a clearer
error for unknown names), so the hub route and the timm route build the same model from the same registry.
Keyword arguments are timm's: ``num_classes``, ``in_chans``, ``features_only``, ``out_indices``,
``frozen_stages``, ``norm_eval``, ``pretrained_cfg_overlay``, ...
"""

dependencies = ['torch', 'torchvision', 'timm', 'huggingface_hub', 'safetensors']

from bh_models import create_model as _create_model  # noqa: E402


def bh_resnet50(pretrained: bool = False, **kwargs):
    """BH-ResNet50: 3x3/1 stem, Bottleneck x (7, 6, 2, 1); outputs at strides 2/4/8/16/32 (64..2048 channels).

    Args:
        pretrained: Load the weights of the default tag (or the one named by ``pretrained_cfg='tag'``).
        **kwargs: Passed to ``timm.create_model``.
    """
    return _create_model('bh_resnet50', pretrained=pretrained, **kwargs)


def bh_hrnet_w18(pretrained: bool = False, **kwargs):
    """BH-HRNet18 (reconstructed layout, see ``bh-models design hrnet``): BH stem, widths 18/36/72/144.

    Args:
        pretrained: Load the weights of the default tag (or the one named by ``pretrained_cfg='tag'``).
        **kwargs: Passed to ``timm.create_model`` (``features_only``, ``feature_location``, ``out_indices``, ...).
    """
    return _create_model('bh_hrnet_w18', pretrained=pretrained, **kwargs)


def bh_hrnet_w32(pretrained: bool = False, **kwargs):
    """BH-HRNet32 (reconstructed layout, see ``bh-models design hrnet``): BH stem, widths 32/64/128/256.

    Args:
        pretrained: Load the weights of the default tag (or the one named by ``pretrained_cfg='tag'``).
        **kwargs: Passed to ``timm.create_model`` (``features_only``, ``feature_location``, ``out_indices``, ...).
    """
    return _create_model('bh_hrnet_w32', pretrained=pretrained, **kwargs)
