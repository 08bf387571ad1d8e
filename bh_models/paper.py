"""The numbers the paper prints (Ning et al., VISAPP 2023, arXiv:2303.11267), as data.

Table 4 gives parameters (M) and GFLOPs for one 640x512 image (640 wide, 512 high). How each number was
counted is pinned down in ``shared/paper/NOTES.md`` and recorded per row below:

* GFLOPs: MMCV 1.x ``get_model_complexity_info`` (= ptflops' pytorch backend, ``count_functional=False``).
  ``flops_scope``: ``'backbone+head'`` counts the trunk plus global avg-pool and the 1000-way fc (what rounds to
  the ResNet rows), ``'backbone'`` the trunk alone (HRNet rows: raw branch outputs, no ``incre`` modules).
* Params: ``param_convention`` names which of the conventions in ``bh_models.complexity`` the row used:
  ``'all'`` every backbone parameter (BN included), ``'conv'`` convolution weights of the whole backbone,
  ``'conv_trainable_frozen1'`` convolution weights outside the stem and stage 1 (frozen in the detector).
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_SIZE_HW = (512, 640)  # height, width of the one image Table 4 is counted on


@dataclass(frozen=True)
class Table4Row:
    """One row of the paper's Table 4 and how to reproduce it."""

    label: str
    model: str  # timm model name
    params_m: float
    gflops: float
    param_convention: str
    flops_scope: str
    # tolerances: the paper's printed precision for rows we know exactly, a relative band for reconstructions
    params_tol_m: float = 0.005
    gflops_tol: float = 0.005
    reconstructed: bool = False

    def params_ok(self, measured_m: float) -> bool:
        """True when ``measured_m`` reproduces the printed parameter count."""
        return abs(measured_m - self.params_m) <= self.params_tol_m

    def gflops_ok(self, measured: float) -> bool:
        """True when ``measured`` reproduces the printed GFLOPs."""
        return abs(measured - self.gflops) <= self.gflops_tol


TABLE4: tuple[Table4Row, ...] = (
    Table4Row('ResNet50', 'resnet50', 23.23, 26.91, 'conv_trainable_frozen1', 'backbone+head'),
    Table4Row('BH-ResNet50', 'bh_resnet50', 10.91, 27.12, 'conv', 'backbone+head'),
    Table4Row('HRNet32', 'hrnet_w32', 29.31, 51.93, 'all', 'backbone'),
    # BH-HRNets: the paper prints only the deepest branch, so the layout is reconstructed (see bh_models.design);
    # a reconstruction must land within 0.5 % of the params and 0.2 % of the GFLOPs.
    Table4Row('BH-HRNet32', 'bh_hrnet_w32', 12.36, 51.89, 'all', 'backbone', 12.36 * 0.005, 51.89 * 0.002, True),
    Table4Row('HRNet18', 'hrnet_w18', 9.56, 21.71, 'all', 'backbone'),
    Table4Row('BH-HRNet18', 'bh_hrnet_w18', 5.85, 21.66, 'all', 'backbone', 5.85 * 0.005, 21.66 * 0.002, True),
)

# Table 5: classification top-1 (%) after pre-training, same recipe for standard and BH networks.
TABLE5_TOP1: dict[str, dict[str, float | None]] = {
    'resnet50': {'cifar100': 65.82, 'imagenet32': 43.12, 'imagenet': 75.92},
    'bh_resnet50': {'cifar100': 68.57, 'imagenet32': 48.75, 'imagenet': 74.68},
    'hrnet_w18': {'cifar100': 55.75, 'imagenet32': None, 'imagenet': 76.80},
    'bh_hrnet_w18': {'cifar100': 59.91, 'imagenet32': 50.68, 'imagenet': 76.62},
    'hrnet_w32': {'cifar100': 55.08, 'imagenet32': None, 'imagenet': 78.50},
    'bh_hrnet_w32': {'cifar100': 61.71, 'imagenet32': 56.00, 'imagenet': 78.23},
}
