"""bh-models: bottom-heavy backbones for tiny object detection, registered in timm.

``import bh_models`` registers every model in timm's registry, after which
``timm.create_model('bh_resnet50')`` and ``timm.list_models('bh_*')`` work as for timm's own models.
"""

from .factory import create_model, list_models
from .hrnet import BHHighResolutionNet, BHHighResolutionNetFeatures  # registers the BH-HRNets in timm
from .resnet import BHResNet  # registers the BH-ResNets in timm

__version__ = '0.1.0'

__all__ = [
    'BHHighResolutionNet',
    'BHHighResolutionNetFeatures',
    'BHResNet',
    'create_model',
    'list_models',
    '__version__',
]
