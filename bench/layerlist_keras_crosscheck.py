"""Cross-check of ctdl.models.layerlist against Keras itself: the same DLAE layer lists are built by Keras 3
(torch backend) and by ctdl, Keras' weights are copied over, and outputs/shapes must agree (164 lists: every conv
kind x sizes x kernels x strides x padding, pooling, padding/cropping, upsampling, Permute/Reshape/Flatten/Dense,
activations, BN, PReLU and every merge mode in nested skips).

Keras is not a ctdl dependency; install it aside and run:
    .venv/bin/pip install --target /tmp/kpkgs keras && rm -rf /tmp/kpkgs/numpy*
    KERAS_BACKEND=torch PYTHONPATH=/tmp/kpkgs .venv/bin/python bench/layerlist_keras_crosscheck.py
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from keras import layers as KL
from ctdl.models.layerlist import *  # noqa: F403,E402 (a script: every spec class is used)
from ctdl.models.layerlist import KerasConv, KerasDense, KerasPReLU

def keras_build(specs):
    inp = keras.Input(specs[0].shape); x = inp; outer = []; inner = []; hooks = []; kl = {}
    for sp in specs[1:]:
        i = sp.index
        if isinstance(sp, ConvSpec):
            d = sp.dims
            if sp.kind == "resize":
                x = (KL.UpSampling2D if d == 2 else KL.UpSampling3D)(sp.upsample)(x)
            cls = {("conv",2):KL.Conv2D,("conv",3):KL.Conv3D,("resize",2):KL.Conv2D,("resize",3):KL.Conv3D,
                   ("transpose",2):KL.Conv2DTranspose,("transpose",3):KL.Conv3DTranspose,("separable",2):KL.SeparableConv2D}
            if sp.kind == "depthwise":
                c = x.shape[-1]
                L = KL.DepthwiseConv2D(sp.kernel, sp.stride, sp.padding, depth_multiplier=sp.maps // c, dilation_rate=sp.dilation)
            else:
                L = cls[(sp.kind, d)](sp.maps, sp.kernel, strides=sp.stride, padding=sp.padding, dilation_rate=sp.dilation)
            x = L(x); kl[i] = L
        elif isinstance(sp, UpsampleSpec): x = (KL.UpSampling2D if sp.dims == 2 else KL.UpSampling3D)(sp.size)(x)
        elif isinstance(sp, ZeroPadSpec): x = (KL.ZeroPadding2D if sp.dims == 2 else KL.ZeroPadding3D)(sp.padding)(x)
        elif isinstance(sp, CropSpec): x = (KL.Cropping2D if sp.dims == 2 else KL.Cropping3D)(sp.cropping)(x)
        elif isinstance(sp, PoolSpec):
            x = {("max",2):KL.MaxPooling2D,("max",3):KL.MaxPooling3D,("avg",2):KL.AveragePooling2D,("avg",3):KL.AveragePooling3D}[(sp.op,sp.dims)](sp.pool, sp.stride)(x)
        elif isinstance(sp, GlobalPoolSpec):
            x = {("max",2):KL.GlobalMaxPooling2D,("max",3):KL.GlobalMaxPooling3D,("avg",2):KL.GlobalAveragePooling2D,("avg",3):KL.GlobalAveragePooling3D}[(sp.op,sp.dims)]()(x)
        elif isinstance(sp, BatchNormSpec): L = KL.BatchNormalization(momentum=sp.momentum, epsilon=sp.epsilon); x = L(x); kl[i] = L
        elif isinstance(sp, ActivationSpec): x = KL.Activation(sp.name)(x)
        elif isinstance(sp, AdvancedActivationSpec):
            if sp.kind == "leaky_relu": x = KL.LeakyReLU(negative_slope=sp.param)(x)
            elif sp.kind == "elu": x = KL.ELU(alpha=sp.param)(x)
            elif sp.kind == "thresholded_relu": x = KL.ReLU(threshold=sp.param)(x)
            else: L = KL.PReLU(); x = L(x); kl[i] = L
        elif isinstance(sp, DenseSpec): L = KL.Dense(sp.units); x = L(x); kl[i] = L
        elif isinstance(sp, FlattenSpec): x = KL.Flatten()(x)
        elif isinstance(sp, ReshapeSpec): x = KL.Reshape(sp.shape)(x)
        elif isinstance(sp, PermuteSpec): x = KL.Permute(sp.dims)(x)
        elif isinstance(sp, DropoutSpec): pass  # inference: identity
        elif isinstance(sp, SkipSpec):
            st = outer if sp.scope == "outer" else inner
            if sp.role == "source": st.append(x)
            else:
                m = {"concatenate":KL.Concatenate,"add":KL.Add,"subtract":KL.Subtract,"multiply":KL.Multiply,"average":KL.Average,"maximum":KL.Maximum}[sp.mode]
                x = m()([st.pop(), x])
        elif isinstance(sp, HookSpec): hooks.append(x)
    return keras.Model(inp, x), kl

def t(a): return torch.tensor(np.asarray(keras.ops.convert_to_numpy(a)))

def copy(net, kl):
    with torch.no_grad():
        for i, L in kl.items():
            m = net.layers[i]
            w = [t(v) for v in L.weights]
            if isinstance(m, KerasConv):
                if m.kind == "separable":
                    dw, pw, b = w
                    m.depthwise.weight.copy_(dw.permute(2, 3, 0, 1).reshape(m.depthwise.weight.shape) if dw.dim()==4 else dw)
                    m.pointwise.weight.copy_(pw.permute(3, 2, 0, 1)); m.pointwise.bias.copy_(b)
                elif m.kind == "depthwise":
                    k, b = w; kk = k.reshape(*k.shape[:2], -1)  # (kh, kw, in*mult)
                    m.conv.weight.copy_(kk.permute(2, 0, 1)[:, None]); m.conv.bias.copy_(b)
                else:
                    k, b = w; nd = k.dim()
                    m.conv.weight.copy_(k.permute(nd - 1, nd - 2, *range(nd - 2))); m.conv.bias.copy_(b)
            elif isinstance(m, KerasDense):
                m.linear.weight.copy_(w[0].T); m.linear.bias.copy_(w[1])
            elif isinstance(m, KerasPReLU):
                m.alpha.copy_(w[0].movedim(-1, 0))
            else:  # BN
                g, b, mu, var = w
                m.weight.copy_(g); m.bias.copy_(b); m.running_mean.copy_(mu); m.running_var.copy_(var)

def check(layers, name):
    net = build_layer_list(layers).eval()
    specs = parse_layer_list(layers)
    km, kl = keras_build(specs)
    # random weights in keras for BN/PReLU too
    for L in kl.values():
        for v in L.weights:
            v.assign(np.random.uniform(0.5, 1.5, v.shape).astype("float32") if "variance" in v.path else np.random.normal(0, 0.3, v.shape).astype("float32"))
    copy(net, kl)
    x = np.random.normal(size=(2,) + tuple(specs[0].shape)).astype("float32")
    ky = np.asarray(keras.ops.convert_to_numpy(km(x, training=False)))
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()) if x.ndim > 2 else torch.from_numpy(x)
    ty = net(xt).detach()
    ty = (ty.movedim(1, -1) if ty.dim() > 2 else ty).numpy()
    assert ky.shape == ty.shape, (name, ky.shape, ty.shape)
    assert tuple(ky.shape[1:]) == net.shapes[-1], (name, ky.shape, net.shapes[-1])
    err = float(np.abs(ky - ty).max()); print(f"{name:40s} shape {ky.shape[1:]} max|diff| {err:.2e} max|y| {np.abs(ky).max():.2f}")
    assert err < 1e-4, name

np.random.seed(0)
T = "he_normal:None:None:0:0"
for n in (6, 7, 9):
    for k in (1, 2, 3, 4):
        for s in (1, 2, 3):
            for pad in ("same", "valid"):
                if pad == "valid" and n < k: continue
                check([f"Input:({n}, {n+1}, 2)", f"Convolution 2D:3:({k}, {k}):({s}, {s}):{pad}:(1, 1):{T}"], f"conv n{n} k{k} s{s} {pad}")
                check([f"Input:({n}, {n+1}, 2)", f"Transpose convolution 2D:3:({k}, {k}):({s}, {s}):{pad}:(1, 1):{T}"], f"tconv n{n} k{k} s{s} {pad}")
check(["Input:(9, 10, 2)", f"Convolution 2D:3:(3, 3):(1, 1):same:(2, 2):{T}"], "dilated same")
check(["Input:(9, 10, 2)", f"Convolution 2D:3:(3, 3):(1, 1):valid:(2, 3):{T}"], "dilated valid")
check(["Input:(9, 10, 2)", f"Transpose convolution 2D:3:(3, 3):(1, 1):same:(2, 2):{T}"], "tconv dilated same")
check(["Input:(9, 10, 3)", f"Separable convolution 2D:4:(3, 3):(2, 2):same:(1, 1):{T}"], "separable")
check(["Input:(9, 10, 3)", f"Depthwise separable convolution 2D:6:(3, 3):(2, 2):same:{T}"], "depthwise x2")
check(["Input:(9, 10, 3)", f"Resize convolution 2D:4:(3, 3):(2, 2):(2, 2):same:(1, 1):{T}"], "resize")
check(["Input:(9, 10, 7, 2)", f"Convolution 3D:3:(3, 2, 3):(2, 2, 1):same:(1, 1, 1):{T}"], "conv3d same s2")
check(["Input:(5, 6, 7, 2)", f"Transpose convolution 3D:3:(3, 3, 2):(2, 1, 2):same:(1, 1, 1):{T}"], "tconv3d same")
check(["Input:(5, 6, 7, 2)", f"Transpose convolution 3D:3:(3, 3, 2):(2, 1, 3):valid::{T}"], "tconv3d valid")
check(["Input:(5, 6, 7, 2)", f"Resize convolution 3D:3:(3, 3, 3):(1, 1, 1):(2, 2, 2):same::{T}", "Max pooling 3D:(2, 2, 2):(2, 2, 2)", "Average pooling 3D:(2, 3, 2):(1, 2, 2)", "Global average pooling 3D"], "3d mix")
check(["Input:(5, 6, 7, 2)", "Zero padding 3D:((1, 0), (2, 1), (0, 3))", "Cropping 3D:((0, 1), (1, 1), (2, 0))", "Upsample 3D:(1, 2, 3)", "Global max pooling 3D"], "3d pad/crop/up")
check(["Input:(4, 5, 3)", "Permute:(2, 3, 1)", "Dense:4", "Flatten", "Dense:6", "Reshape:(3, 2)", "Activation:softmax"], "permute/dense/flatten/reshape")
check(["Input:(4, 5, 3)", "Zero padding 2D:((1, 2), (0, 1))", "Cropping 2D:((1, 0), (2, 1))", "Upsample 2D:(2, 3)", "Max pooling 2D:(3, 2):(2, 2)", "Average pooling 2D:(2, 2):(1, 1)", "Flatten"], "2d pad/crop/up/pool")
check(["Input:(4, 5, 3)", "Batch normalization:0.9:0.01", "PreLU", "Leaky reLU:0.2", "ELU:0.7", "Thresholded reLU:0.1", "Activation:selu", "Activation:softplus", "Activation:softsign", "Activation:tanh", "Activation:sigmoid"], "bn/activations")
for mode in ("concatenate", "add", "subtract", "multiply", "average", "maximum"):
    check(["Input:(8, 8, 2)", f"Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):{T}", f"Outer skip source:{mode}",
           f"Convolution 2D:2:(3, 3):(2, 2):same:(1, 1):{T}", f"Inner skip source:{mode}", f"Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):{T}",
           f"Inner skip target:{mode}", f"Resize convolution 2D:2:(3, 3):(1, 1):(2, 2):same:(1, 1):{T}", f"Outer skip target:{mode}"], f"skips {mode}")
print("ALL OK")
