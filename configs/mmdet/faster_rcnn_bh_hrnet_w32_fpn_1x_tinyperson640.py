# Faster R-CNN + FPN with BH-HRNet32 (reconstructed layout, see the README) on TinyPerson 640x512 patches
# (MMDetection 3.x), see _base_faster_rcnn_fpn_tinyperson640.py. The FPN takes the raw branch outputs
# (feature_location=''): the trunk that Table 4 counts, and what MMDetection's own HRNet backbone returns; timm's
# default 'incre' head would give 128/256/512/1024 channels instead.
_base_ = './_base_faster_rcnn_fpn_tinyperson640.py'

model = dict(
    backbone=dict(model_name='bh_hrnet_w32', feature_location=''),
    neck=dict(in_channels=[32, 64, 128, 256]),  # bh_hrnet_w32 branches at strides 4-32
)
