r"""2-D convolution (cross-correlation, as in every DL framework), lowered to one large GEMM.

Math
----
With ``x`` (N, C, H, W) zero-padded by ``(ph, pw)``, weights ``w`` (O, C, kh, kw), bias ``b`` (O,),
stride ``(sh, sw)``, the output ``y`` (N, O, Ho, Wo), ``Ho = (H + 2ph - kh) // sh + 1``, is

    y[n, o, oh, ow] = b[o] + sum_{c, i, j} w[o, c, i, j] * x[n, c, oh*sh + i - ph, ow*sw + j - pw]

and, for an upstream gradient ``gy`` (N, O, Ho, Wo),

    gw[o, c, i, j] = sum_{n, oh, ow} gy[n, o, oh, ow] * x[n, c, oh*sh + i - ph, ow*sw + j - pw]
    gb[o]          = sum_{n, oh, ow} gy[n, o, oh, ow]
    gx[n, c, h, w] = sum over every (o, i, j, oh, ow) whose window reads x[n, c, h, w] of
                     gy[n, o, oh, ow] * w[o, c, i, j]

Lowering
--------
``im2col`` copies every receptive field into a column of ``cols`` (C*kh*kw, N*Ho*Wo) (layout in
:mod:`minignn.layers.conv.cpu`). Then, with ``W = w.reshape(O, C*kh*kw)`` and
``G = gy`` rearranged to (O, N*Ho*Wo),

    Y = W @ cols        gw = G @ cols.T        gcols = W.T @ G,  gx = col2im(gcols)

Three large float32 GEMMs (BLAS) carry all the arithmetic; the column matrix spans the whole batch,
so even a 2x2 feature map gives a wide product. Only the im2col/col2im copies are device
kernels (Numba on the CPU, CUDA in ``kernels.cu`` on a GPU); the rest is ``xp`` code shared by
all devices.

Buffers: the column matrix is kept from forward to backward (no second im2col), then overwritten
in place by ``gcols``. A :class:`Conv2d` reuses its column and output-matrix buffers from one
step to the next, so a training loop does not page-fault fresh memory on every call. When the
column matrix of the whole batch would exceed ``max_cols_bytes``, the batch is processed in
chunks and backward recomputes each chunk's columns instead.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_grad_output, check_positive_int
from minignn.init import uniform_fan_in
from minignn.module import Module, Parameter

from .._window import out_size, pair
from . import reference as _ref
from .cpu import col2im_cpu, im2col_cpu

__all__ = ["Conv2d", "conv2d_forward", "conv2d_backward", "im2col", "col2im", "MAX_COLS_BYTES"]

#: Default cap on the column matrix (bytes); above it the batch is processed in chunks.
MAX_COLS_BYTES = 256 * 2**20

def im2col(x, kernel, stride, padding, out_hw, cols=None):
    """Lower ``x`` (N, C, H, W) to ``cols`` (C*kh*kw, N*Ho*Wo); see the module docstring.

    ``cols`` may be given (C-contiguous, x's dtype and device) to be filled in place.
    """
    xp = backend.get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out_hw
    n, c = x.shape[:2]
    if cols is None:
        cols = xp.empty((c * kh * kw, n * ho * wo), dtype=x.dtype)
    ops.kernels("im2col", x).forward(xp.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, ho, wo, cols)
    return cols


def col2im(cols, x_shape, kernel, stride, padding, out_hw, gx=None):
    """Adjoint of :func:`im2col`: ``cols`` (C*kh*kw, N*Ho*Wo) -> ``gx`` (N, C, H, W), summing
    every column entry into the input cell it came from. ``gx`` (C-contiguous) is overwritten."""
    xp = backend.get_array_module(cols)
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out_hw
    if gx is None:
        gx = xp.empty(x_shape, dtype=cols.dtype)
    ops.kernels("im2col", cols).backward(cols, kh, kw, sh, sw, ph, pw, ho, wo, gx)
    return gx


def _buffer(workspace, key, shape, dtype, xp):
    """A C-contiguous array of ``shape`` from ``workspace[key]`` (grown when too small), or a
    fresh one when ``workspace`` is None. Reusing buffers saves the page faults of fresh memory."""
    size = int(np.prod(shape))
    if workspace is None:
        return xp.empty(shape, dtype=dtype)
    buf = workspace.get(key)
    if (buf is None or buf.size < size or buf.dtype != np.dtype(dtype)
            or backend.get_array_module(buf) is not xp):
        buf = xp.empty(size, dtype=dtype)
        workspace[key] = buf
    return buf[:size].reshape(shape)


class _Saved:
    """What :func:`conv2d_forward` leaves for :func:`conv2d_backward`."""

    __slots__ = ("x", "w", "has_bias", "kernel", "stride", "padding", "out_hw", "chunk", "cols",
                 "workspace", "generation", "y_shape")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _geometry(x, w, b, stride, padding, where):
    check_array(w, "w", ndim=4, where=where)
    o, c, kh, kw = w.shape
    check_array(x, "x", ndim=4, where=where, channels=c, dtype=w.dtype)
    if b is not None:
        check_array(b, "b", ndim=1, where=where, channels=o, channel_axis=0, dtype=w.dtype)
    sh, sw = pair(stride, "stride", where)
    ph, pw = pair(padding, "padding", where, minimum=0)
    ho = out_size(x.shape[2], kh, sh, ph, "H", where)
    wo = out_size(x.shape[3], kw, sw, pw, "W", where)
    return (kh, kw), (sh, sw), (ph, pw), (ho, wo)


def conv2d_forward(x, w, b=None, stride=1, padding=0, *, workspace=None, max_cols_bytes=MAX_COLS_BYTES):
    """Convolution forward pass.

    Parameters
    ----------
    x : array (N, C, H, W)
    w : array (O, C, kh, kw), same dtype as x
    b : array (O,) or None
    stride, padding : int or (int, int)
    workspace : dict or None
        Reusable buffers (a :class:`Conv2d` passes its own); None allocates fresh ones.
    max_cols_bytes : int
        Cap on the column matrix; larger batches are processed in chunks.

    Returns
    -------
    y : array (N, O, Ho, Wo)
    saved : object to pass to :func:`conv2d_backward` (holds x and the column matrix).
    """
    where = "conv2d_forward"
    kernel, stride, padding, (ho, wo) = _geometry(x, w, b, stride, padding, where)
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    n, c = x.shape[:2]
    o = w.shape[0]
    ckk = c * kernel[0] * kernel[1]
    howo = ho * wo
    chunk = max(1, min(n, int(max_cols_bytes) // max(1, ckk * howo * x.dtype.itemsize)))
    generation = None
    if workspace is not None:  # a later forward on the same workspace invalidates this one's columns
        generation = workspace["generation"] = workspace.get("generation", 0) + 1
    w2 = w.reshape(o, ckk)
    y = xp.empty((n, o, ho, wo), dtype=x.dtype)
    cols = None
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        nc = n1 - n0
        cols = _buffer(workspace, "cols", (ckk, nc * howo), x.dtype, xp)
        im2col(x[n0:n1], kernel, stride, padding, (ho, wo), cols)
        if nc == 1:  # the GEMM writes straight into the output image
            out = y[n0].reshape(o, howo)
            xp.matmul(w2, cols, out=out)
            if b is not None:
                out += b[:, None]
            continue
        ymat = _buffer(workspace, "omat", (o, nc * howo), x.dtype, xp)
        xp.matmul(w2, cols, out=ymat)
        dst = y[n0:n1].reshape(nc, o, howo)
        src = ymat.reshape(o, nc, howo).transpose(1, 0, 2)
        if b is not None:
            xp.add(src, b[None, :, None], out=dst)
        else:
            dst[...] = src
    saved = _Saved(x=x, w=w, has_bias=b is not None, kernel=kernel, stride=stride, padding=padding,
                   out_hw=(ho, wo), chunk=chunk, cols=cols if chunk >= n else None, workspace=workspace,
                   generation=generation, y_shape=y.shape)
    return y, saved


def conv2d_backward(gy, saved, need_gx=True):
    """Convolution backward pass.

    Parameters
    ----------
    gy : array (N, O, Ho, Wo), the gradient of the loss with respect to y
    saved : what :func:`conv2d_forward` returned with y
    need_gx : bool
        False skips the input gradient (a network's first layer) and returns None for it.

    Returns
    -------
    gx : array (N, C, H, W) or None
    gw : array (O, C, kh, kw)
    gb : array (O,) or None (when forward had no bias)

    The saved column matrix is overwritten by the input-gradient columns; a second backward
    from the same forward recomputes it.
    """
    where = "conv2d_backward"
    x, w = saved.x, saved.w
    check_grad_output(gy, saved.y_shape, dtype=x.dtype, where=where)
    xp = backend.get_array_module(x)
    n = x.shape[0]
    o = w.shape[0]
    ho, wo = saved.out_hw
    howo = ho * wo
    ckk = w.shape[1] * w.shape[2] * w.shape[3]
    w2 = w.reshape(o, ckk)
    ws = saved.workspace
    gw2 = (xp.empty if n > 0 else xp.zeros)((o, ckk), dtype=x.dtype)  # an empty batch has zero gradient
    gb = xp.zeros((o,), dtype=x.dtype) if saved.has_bias else None
    gx = xp.empty(x.shape, dtype=x.dtype) if need_gx else None
    geo = (saved.kernel, saved.stride, saved.padding, saved.out_hw)
    chunk = saved.chunk
    if ws is not None and ws.get("generation") != saved.generation:
        saved.cols = None  # the buffer now holds another call's columns
    if ws is not None and (need_gx or saved.cols is None):
        ws["generation"] = ws.get("generation", 0) + 1  # this call overwrites the buffer
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        nc = n1 - n0
        if nc == 1:
            gmat = xp.ascontiguousarray(gy[n0].reshape(o, howo))
        else:
            gmat = _buffer(ws, "omat", (o, nc * howo), x.dtype, xp)
            gmat.reshape(o, nc, howo)[...] = gy[n0:n1].reshape(nc, o, howo).transpose(1, 0, 2)
        if gb is not None:
            gb += gmat.sum(axis=1)
        cols = saved.cols
        if cols is None:
            cols = im2col(x[n0:n1], *geo[:3], geo[3], _buffer(ws, "cols", (ckk, nc * howo), x.dtype, xp))
        if n0 == 0:
            xp.matmul(gmat, cols.T, out=gw2)
        else:
            gw2 += gmat @ cols.T
        if need_gx:
            saved.cols = None  # about to be overwritten by the input-gradient columns
            gcols = xp.matmul(w2.T, gmat, out=cols)
            col2im(gcols, (nc,) + x.shape[1:], *geo, gx=gx[n0:n1])
    return gx, gw2.reshape(w.shape), gb


# ---------------------------------------------------------------------------------- the op table
def _sample_geometry(draw):
    """(kernel, stride, padding, H, W): the kernel fits the padded input; H != W, non-square
    kernels and strides that do not tile the input all occur, and half the draws have the
    "same" width at stride 1 (Wo == W: 3x3 padding 1, 1x1, 5x5 padding 2...), the kernels'
    shifted-copy path."""
    kh, kw = draw.int(1, 5), draw.int(1, 5)
    sh, sw = draw.int(1, 3), draw.int(1, 3)
    ph, pw = draw.int(0, min(2, kh)), draw.int(0, min(2, kw))
    if draw.bool():
        kw = draw.choice([1, 3, 5])
        sw, pw = 1, kw // 2
        if draw.bool():
            sh, kh, ph = 1, kw, pw
    h = max(1, kh - 2 * ph + draw.int(0, 6))
    w = max(1, kw - 2 * pw + draw.int(0, 6))
    return (kh, kw), (sh, sw), (ph, pw), h, w


def _sample_im2col(draw, dtype):
    k, s, p, h, w = _sample_geometry(draw)
    n, c = cases.planes(draw)
    return ops.Case((cases.values(draw, (n, c, h, w), dtype),), dict(kernel=k, stride=s, padding=p))


def _sample_conv(draw, dtype):
    k, s, p, h, w = _sample_geometry(draw)
    n, c, o = cases.batch(draw), draw.int(1, 4), draw.int(1, 4)
    b = cases.values(draw, (o,), dtype) if draw.bool() else None
    # one image per column buffer in one draw of three: the chunked path that recomputes columns
    cap = 1 if draw.int(0, 2) == 0 else MAX_COLS_BYTES
    return ops.Case((cases.values(draw, (n, c, h, w), dtype), cases.values(draw, (o, c) + k, dtype), b),
                    dict(stride=s, padding=p, max_cols_bytes=cap))


def _im2col_forward(x, kernel, stride, padding):
    ho = out_size(x.shape[2], kernel[0], stride[0], padding[0])
    wo = out_size(x.shape[3], kernel[1], stride[1], padding[1])
    geo = (kernel, stride, padding, (ho, wo))
    return (im2col(x, *geo),), (x.shape, geo)


def _conv_forward(x, w, b, **kw):
    y, saved = conv2d_forward(x, w, b, **kw)
    return (y,), saved


def _conv_forward_ref(x, w, b, stride, padding, max_cols_bytes=None):
    s, p = pair(stride, "stride"), pair(padding, "padding", minimum=0)
    return (_ref.conv2d_forward_ref(x, w, b, s, p),), (x, w, b is not None, s, p)


def _conv_backward_ref(saved, gy):
    x, w, has_bias, s, p = saved
    gx, gw, gb = _ref.conv2d_backward_ref(x, w, gy, s, p)
    return gx, gw, gb if has_bias else None


ops.register(ops.Op(
    "im2col", "the convolution's column matrix (forward) and its adjoint col2im (backward)",
    forward=_im2col_forward,
    backward=lambda saved, gcols: (col2im(gcols, saved[0], *saved[1]),),
    reference=(lambda x, **g: ((_ref.im2col_ref(x, **g),), (x.shape, g)),
               lambda saved, gcols: (_ref.col2im_ref(gcols, saved[0], **saved[1]),)),
    cpu=ops.Kernels(im2col_cpu, col2im_cpu), gpu="minignn.layers.conv.gpu:KERNELS", sample=_sample_im2col))

ops.register(ops.Op(
    "conv2d", "2-D convolution (cross-correlation) as im2col and three GEMMs",
    forward=_conv_forward, backward=lambda saved, gy: conv2d_backward(gy, saved),
    reference=(_conv_forward_ref, _conv_backward_ref),
    cpu=ops.XP, gpu=ops.XP, needs=("im2col",), sample=_sample_conv,
    tol=lambda dtype: dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12),
    gradcheck=dict(max_checks=12)))


class Conv2d(Module):
    """2-D convolution layer, NCHW, zero padding.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride : int or (int, int)
    padding : int or (int, int), >= 0 (zeros)
    bias : bool
    rng : numpy.random.Generator or None (the library-wide generator)

    Shapes: x (N, in_channels, H, W) -> y (N, out_channels, Ho, Wo) with
    ``Ho = (H + 2*ph - kh) // sh + 1`` (likewise Wo). Parameters: ``weight``
    (out_channels, in_channels, kh, kw) and ``bias`` (out_channels,), both drawn from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = in_channels*kh*kw`` (PyTorch's default).

    Attributes
    ----------
    needs_input_grad : bool
        Set False on a network's first layer: backward then skips the input gradient (a third of
        the work) and returns None.
    max_cols_bytes : int
        Cap on the column buffer; bigger batches are processed in chunks.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        super().__init__()
        where = "Conv2d"
        self.in_channels = check_positive_int(in_channels, "in_channels", where)
        self.out_channels = check_positive_int(out_channels, "out_channels", where)
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = pair(stride, "stride", where)
        self.padding = pair(padding, "padding", where, minimum=0)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        self.weight = Parameter(uniform_fan_in((self.out_channels, self.in_channels, kh, kw), fan_in, rng))
        self.bias = Parameter(uniform_fan_in((self.out_channels,), fan_in, rng)) if bias else None
        self.needs_input_grad = True
        self.max_cols_bytes = MAX_COLS_BYTES
        self._workspace = {}
        self._saved = None

    def forward(self, x):
        """x (N, in_channels, H, W) -> y (N, out_channels, Ho, Wo)."""
        where = "Conv2d.forward"
        w = self.weight.data
        check_array(x, "x", ndim=4, where=where, channels=self.in_channels, dtype=w.dtype)
        b = None if self.bias is None else self.bias.data
        y, self._saved = conv2d_forward(x, w, b, self.stride, self.padding, workspace=self._workspace,
                                        max_cols_bytes=self.max_cols_bytes)
        return y

    def backward(self, gy):
        """gy (N, out_channels, Ho, Wo) -> gx (N, in_channels, H, W) (None when
        ``needs_input_grad`` is False); adds into ``weight.grad`` and ``bias.grad``."""
        saved = self._saved_or_raise(self._saved)
        check_grad_output(gy, saved.y_shape, dtype=saved.x.dtype, where="Conv2d.backward")
        gx, gw, gb = conv2d_backward(gy, saved, need_gx=self.needs_input_grad)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx

    def _moved(self, device, dtype):
        self._workspace = {}
        self._saved = None

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.bias is None:
            s += ", bias=False"
        return s
