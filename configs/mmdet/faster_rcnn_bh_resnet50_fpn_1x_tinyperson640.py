# Faster R-CNN + FPN with BH-ResNet50 on TinyPerson 640x512 patches (MMDetection 3.x): the authors'
# faster_rcnn_bh50_sspnet with stock MMDetection parts, see _base_faster_rcnn_fpn_tinyperson640.py.
_base_ = './_base_faster_rcnn_fpn_tinyperson640.py'

model = dict(
    backbone=dict(model_name='bh_resnet50'),
    neck=dict(in_channels=[256, 512, 1024, 2048]),  # bh_resnet50 levels 1-4 (strides 4-32)
)
