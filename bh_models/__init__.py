"""bh-models: bottom-heavy backbones for tiny object detection, registered in timm.

``import bh_models`` registers every model in timm's registry, after which
``timm.create_model('bh_resnet50')`` and ``timm.list_models('bh_*')`` work as for timm's own models. Each weight
card in the weights directory (``BH_MODELS_WEIGHTS_DIR``, default ``weights/``) adds its ``<model>.<tag>``.
"""

from .factory import create_model, list_models
from .hrnet import BHHighResolutionNet, BHHighResolutionNetFeatures  # registers the BH-HRNets in timm
from .inference import optimize_for_inference
from .resnet import BHResNet  # registers the BH-ResNets in timm
from .weights import WeightCard, check_cards_claimed, list_cards, reload_cards

check_cards_claimed()  # a card for a model no module registered would be silently unused: refuse it

__version__ = '0.1.0'

__all__ = [
    'BHHighResolutionNet',
    'BHHighResolutionNetFeatures',
    'BHResNet',
    'WeightCard',
    'create_model',
    'list_cards',
    'list_models',
    'optimize_for_inference',
    'reload_cards',
    '__version__',
]
