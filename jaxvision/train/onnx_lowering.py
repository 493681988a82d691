"""A jaxpr -> ONNX lowering for the primitives jaxvision's classifiers and segmenters trace to.

Why our own and not ``jax2onnx``: jax2onnx 0.17.1 pins ``orbax-checkpoint<0.11.37`` (so
installing it beside this package's orbax would downgrade it) and pulls equinox, dm-pix,
orbax-export and netron; and its MaxPool node for torch-style pooling is refused by
onnxruntime. A jaxpr of an eval-mode forward is small: inline every call, map each primitive
to one or a few ONNX nodes (NHWC convolutions and pools transposed to ONNX's NCHW around the
node; onnxruntime's optimiser folds the transposes of constant kernels), and express the one
symbolic dimension, the batch, through ``Shape(images)``. A primitive outside the table is an
error naming it, so a model that cannot be exported is refused, not approximated.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

OPSET = 18
BATCH = "batch"  # the symbolic batch dimension's name, in jax.export and in the ONNX graph

UNARY = {"neg": "Neg", "exp": "Exp", "sqrt": "Sqrt", "tanh": "Tanh", "logistic": "Sigmoid",
         "log": "Log", "abs": "Abs", "erf": "Erf", "sign": "Sign", "floor": "Floor",
         "ceil": "Ceil", "sin": "Sin", "cos": "Cos", "not": "Not", "round": "Round"}
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
          "pow": "Pow", "gt": "Greater", "lt": "Less", "ge": "GreaterOrEqual",
          "le": "LessOrEqual", "eq": "Equal", "and": "And", "or": "Or"}
IDENTITY = {"copy", "copy_p", "stop_gradient", "reduce_precision", "optimization_barrier",
            "sharding_constraint"}
REDUCE = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin",
          "reduce_prod": "ReduceProd"}
CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")  # where call-like primitives keep their body


class UnsupportedPrimitive(NotImplementedError):
    pass


class Graph:
    """The ONNX nodes and initialisers being built, and the batch size as a 1-D int64 tensor."""

    def __init__(self, onnx, input_name: str):
        self.onnx, self.h = onnx, onnx.helper
        self.nodes, self.inits, self.count = [], [], 0
        self.batch = self.node("Shape", [input_name], start=0, end=1)

    def name(self, prefix="t") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def node(self, op: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=None, prefix="c") -> str:
        array = np.asarray(value, dtype=dtype)
        name = self.name(prefix)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def dims(self, shape) -> str:
        """A 1-D int64 tensor of ``shape``, whose symbolic entries are ``a * batch + c``."""
        if all(isinstance(d, (int, np.integer)) for d in shape):
            return self.const(np.asarray(shape, np.int64))
        parts = []
        for d in shape:
            if isinstance(d, (int, np.integer)):
                parts.append(self.const(np.asarray([d], np.int64)))
                continue
            c = int(d._evaluate({BATCH: 0}))
            a = int(d._evaluate({BATCH: 1})) - c
            if int(d._evaluate({BATCH: 7})) != 7 * a + c:
                raise UnsupportedPrimitive(f"dimension {d}: only a * {BATCH} + c is expressed")
            term = self.batch if a == 1 else self.node(
                "Mul", [self.batch, self.const(np.asarray([a], np.int64))])
            parts.append(term if c == 0 else self.node(
                "Add", [term, self.const(np.asarray([c], np.int64))]))
        return self.node("Concat", parts, axis=0)


def _static(shape) -> bool:
    return all(isinstance(d, (int, np.integer)) for d in shape)


def _nchw(g: Graph, x: str, spec) -> str:
    return g.node("Transpose", [x], perm=list(spec))


def _from_nchw(g: Graph, y: str, spec) -> str:
    inverse = [0] * len(spec)
    for i, d in enumerate(spec):
        inverse[d] = i
    return g.node("Transpose", [y], perm=inverse)


def _conv(g, eqn, x, w):
    p = eqn.params
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise UnsupportedPrimitive("conv_general_dilated with lhs dilation (a transposed "
                                   "convolution) or batch groups")
    lhs, rhs, out = p["dimension_numbers"]
    pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
    if min(pads) < 0:
        raise UnsupportedPrimitive("conv_general_dilated with negative padding")
    y = g.node("Conv", [_nchw(g, x, lhs), _nchw(g, w, rhs)], strides=list(p["window_strides"]),
               pads=pads, dilations=list(p["rhs_dilation"]), group=p["feature_group_count"])
    return _from_nchw(g, y, out)


def _pool(g, eqn, x):
    """reduce_window over the spatial dimensions only (the others have window 1, stride 1, no
    padding): MaxPool, or AveragePool (padding counted) times the window size for a sum."""
    p = eqn.params
    window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    if any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"])):
        raise UnsupportedPrimitive(f"{eqn.primitive.name} with dilation")
    rank = len(window)
    spatial = [i for i in range(rank)
               if window[i] != 1 or strides[i] != 1 or tuple(padding[i]) != (0, 0)]
    other = [i for i in range(rank) if i not in spatial]
    if len(other) != 2 or not spatial:
        raise UnsupportedPrimitive(f"{eqn.primitive.name} over dimensions {spatial}: expected "
                                   "a pool over the spatial dimensions of an N, C, ... array")
    spec = other + spatial
    attrs = dict(kernel_shape=[window[i] for i in spatial],
                 strides=[strides[i] for i in spatial],
                 pads=[padding[i][0] for i in spatial] + [padding[i][1] for i in spatial])
    xt = _nchw(g, x, spec)
    if eqn.primitive.name == "reduce_window_max":
        y = g.node("MaxPool", [xt], **attrs)
    else:
        y = g.node("AveragePool", [xt], count_include_pad=1, **attrs)
        y = g.node("Mul", [y, g.const(float(np.prod(attrs["kernel_shape"])),
                                      eqn.outvars[0].aval.dtype)])
    return _from_nchw(g, y, spec)


def _dot(g, eqn, a, b):
    (ca, cb), (ba, bb) = eqn.params["dimension_numbers"]
    ra, rb = eqn.invars[0].aval.ndim, eqn.invars[1].aval.ndim
    if not ba and len(ca) == 1 and ca[0] == ra - 1 and rb == 2 and cb[0] == 0:
        return g.node("MatMul", [a, b])
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    sa, sb = [None] * ra, [None] * rb
    for i, j in [*zip(ba, bb), *zip(ca, cb)]:
        sa[i] = sb[j] = next(letters)
    sa = [s or next(letters) for s in sa]
    sb = [s or next(letters) for s in sb]
    out = [sa[i] for i in ba] + [s for i, s in enumerate(sa) if i not in ba and i not in ca] + [
        s for i, s in enumerate(sb) if i not in bb and i not in cb]
    return g.node("Einsum", [a, b], equation=f"{''.join(sa)},{''.join(sb)}->{''.join(out)}")


def _gather(g, eqn, x, idx):
    """``x[..., idx, ...]`` along one axis (what jnp.take and integer-array indexing trace
    to): ONNX Gather; ``table[i, j]`` over several axes: GatherND; one block at a computed
    start (a slice at a traced offset): ONNX Slice. Other gathers are refused."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    shape = eqn.invars[0].aval.shape
    if eqn.invars[1].aval.ndim == 1 and not dn.operand_batching_dims and tuple(
            dn.offset_dims) == tuple(range(eqn.outvars[0].aval.ndim)) and all(
                sizes[i] == shape[i] for i in range(len(shape)) if i not in dn.start_index_map):
        axes = list(dn.start_index_map)
        starts = g.node("Cast", [idx], to=g.onnx.TensorProto.INT64)
        ends = g.node("Add", [starts, g.const(np.asarray([sizes[a] for a in axes], np.int64))])
        y = g.node("Slice", [x, starts, ends, g.const(np.asarray(axes, np.int64))])
        if dn.collapsed_slice_dims:
            y = g.node("Squeeze", [y, g.const(np.asarray(dn.collapsed_slice_dims, np.int64))])
        return y
    if (tuple(dn.collapsed_slice_dims) != tuple(dn.start_index_map) or dn.operand_batching_dims
            or any(sizes[i] != (1 if i in dn.start_index_map else shape[i])
                   for i in range(len(shape)))):
        raise UnsupportedPrimitive(f"gather {dn} slice sizes {sizes}")
    axis = dn.start_index_map[0]
    n_idx = eqn.invars[1].aval.ndim - 1
    expected = [i for i in range(len(shape) - 1 + n_idx) if not axis <= i < axis + n_idx]
    if len(dn.start_index_map) == 1 and tuple(dn.offset_dims) == tuple(expected):
        indices = g.node("Squeeze", [idx, g.const(np.asarray([n_idx], np.int64))])
        return g.node("Gather", [x, indices], axis=axis)
    # points at several axes (a lookup table[i, j]): the indexed axes moved first, GatherND,
    # then jax's order (offset_dims hold the rest of the operand, the others the indices')
    rest = [d for d in range(len(shape)) if d not in dn.start_index_map]
    y = g.node("GatherND", [g.node("Transpose", [x], perm=[*dn.start_index_map, *rest]),
                            g.node("Cast", [idx], to=g.onnx.TensorProto.INT64)])
    perm, k, j = [], 0, 0
    for pos in range(n_idx + len(rest)):
        if pos in dn.offset_dims:
            perm.append(n_idx + k)
            k += 1
        else:
            perm.append(j)
            j += 1
    return g.node("Transpose", [y], perm=perm)


def _broadcast(g, eqn, x):
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    src = eqn.invars[0].aval.shape
    new = [i for i in range(len(shape)) if i not in dims]
    if new:
        x = g.node("Unsqueeze", [x, g.const(np.asarray(new, np.int64))])
    full = [1] * len(shape)
    for k, i in enumerate(dims):
        full[i] = src[k]
    if all(_same(a, b) for a, b in zip(full, shape)):
        return g.node("Identity", [x])
    # Expand broadcasts bidirectionally: a 1 keeps what the operand has there already
    target = [1 if _same(a, b) else b for a, b in zip(full, shape)]
    return g.node("Expand", [x, g.dims(target)])


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # symbolic comparisons that cannot be decided
        return False


def _pad(g, eqn, x, value):
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config) or min(
            min(lo, hi) for lo, hi, _ in config) < 0:
        raise UnsupportedPrimitive("pad with interior or negative padding")
    pads = [int(lo) for lo, _, _ in config] + [int(hi) for _, hi, _ in config]
    return g.node("Pad", [x, g.const(np.asarray(pads, np.int64)), value], mode="constant")


def _slice(g, eqn, x):
    p = eqn.params
    n = len(p["start_indices"])
    return g.node("Slice", [x, g.const(np.asarray(p["start_indices"], np.int64)),
                            g.dims(p["limit_indices"]), g.const(np.arange(n, dtype=np.int64)),
                            g.const(np.asarray(p["strides"] or (1,) * n, np.int64))])


def _dynamic_slice(g, eqn, ins):
    """A block at traced starts (in bounds: jax would clamp them, ONNX's Slice does not)."""
    zero = g.const(np.asarray([0], np.int64))
    starts = g.node("Concat", [g.node("Unsqueeze", [g.node(
        "Cast", [s], to=g.onnx.TensorProto.INT64), zero]) for s in ins[1:]], axis=0)
    ends = g.node("Add", [starts, g.dims(eqn.params["slice_sizes"])])
    return g.node("Slice", [ins[0], starts, ends])


def _lower(g: Graph, eqn, ins: list[str]) -> list[str]:
    name, p = eqn.primitive.name, eqn.params
    out_aval = eqn.outvars[0].aval
    if name in UNARY:
        return [g.node(UNARY[name], ins)]
    if name in BINARY:
        return [g.node(BINARY[name], ins)]
    if name in IDENTITY:
        return [g.node("Identity", [i]) for i in ins]
    if name in REDUCE:
        if not p["axes"]:
            return [g.node("Identity", ins)]
        return [g.node(REDUCE[name], [ins[0], g.const(np.asarray(p["axes"], np.int64))],
                       keepdims=0)]
    simple: dict[str, Callable[[], Any]] = {
        "ne": lambda: g.node("Not", [g.node("Equal", ins)]),
        "rsqrt": lambda: g.node("Reciprocal", [g.node("Sqrt", ins)]),
        "square": lambda: g.node("Mul", [ins[0], ins[0]]),
        "integer_pow": lambda: (g.node("Mul", [ins[0], ins[0]]) if p["y"] == 2 else g.node(
            "Pow", [ins[0], g.const(p["y"], out_aval.dtype)])),
        "erfc": lambda: g.node("Sub", [g.const(1, out_aval.dtype), g.node("Erf", ins)]),
        "log1p": lambda: g.node("Log", [g.node("Add", [g.const(1, out_aval.dtype), ins[0]])]),
        "clamp": lambda: g.node("Max", [g.node("Min", [ins[1], ins[2]]), ins[0]]),
        "convert_element_type": lambda: g.node(
            "Cast", ins, to=g.h.np_dtype_to_tensor_dtype(np.dtype(p["new_dtype"]))),
        "reshape": lambda: g.node("Reshape", [ins[0], g.dims(p["new_sizes"])]),
        "squeeze": lambda: g.node("Squeeze", [ins[0], g.const(
            np.asarray(p["dimensions"], np.int64))]),
        "transpose": lambda: g.node("Transpose", ins, perm=list(p["permutation"])),
        "concatenate": lambda: g.node("Concat", ins, axis=p["dimension"]),
        "stack": lambda: g.node("Concat", [g.node("Unsqueeze", [i, g.const(
            np.asarray([p["axis"]], np.int64))]) for i in ins], axis=p["axis"]),
        "broadcast_in_dim": lambda: _broadcast(g, eqn, ins[0]),
        "conv_general_dilated": lambda: _conv(g, eqn, *ins),
        "dot_general": lambda: _dot(g, eqn, *ins),
        "reduce_window_max": lambda: _pool(g, eqn, ins[0]),
        "reduce_window_sum": lambda: _pool(g, eqn, ins[0]),
        "pad": lambda: _pad(g, eqn, *ins),
        "slice": lambda: _slice(g, eqn, ins[0]),
        "gather": lambda: _gather(g, eqn, *ins),
        "argmax": lambda: g.node("Cast", [g.node("ArgMax", ins, axis=p["axes"][0], keepdims=0)],
                                 to=g.h.np_dtype_to_tensor_dtype(np.dtype(p["index_dtype"]))),
        "dynamic_slice": lambda: _dynamic_slice(g, eqn, ins),
        "dim_as_value": lambda: g.node("Cast", [g.node("Squeeze", [g.dims([p["dim"]]), g.const(
            np.asarray([0], np.int64))])], to=g.h.np_dtype_to_tensor_dtype(out_aval.dtype)),
        "iota": lambda: g.const(np.asarray(_iota(p), out_aval.dtype)),
    }
    if name == "select_n":
        if len(ins) != 3:
            raise UnsupportedPrimitive("select_n with more than two cases")
        return [g.node("Where", [ins[0], ins[2], ins[1]])]
    if name == "split":
        outs = g.node("Split", [ins[0], g.const(np.asarray(p["sizes"], np.int64))],
                      n_out=len(p["sizes"]), axis=p["axis"])
        return list(outs) if len(p["sizes"]) > 1 else [outs]
    if name not in simple:
        raise UnsupportedPrimitive(
            f"jax primitive {name!r} has no ONNX lowering here (jaxvision/train/onnx_lowering.py)")
    return [simple[name]()]


def _iota(p):
    shape, dim = p["shape"], p["dimension"]
    if not _static(shape):
        raise UnsupportedPrimitive("iota of a batch-dependent shape")
    return np.broadcast_to(np.arange(shape[dim]).reshape(
        [-1 if i == dim else 1 for i in range(len(shape))]), shape)


def _run(g: Graph, jaxpr, consts, args) -> list[str]:
    from jax.extend.core import Literal

    env = {}

    def read(v):
        if isinstance(v, Literal):
            return g.const(np.asarray(v.val, v.aval.dtype))
        return env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = g.const(np.asarray(c), prefix="w")
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        body = next((eqn.params[k] for k in CALLS if k in eqn.params), None)
        if body is not None:  # jit, custom_jvp_call, custom_vjp_call...: inline the body
            closed = body if hasattr(body, "consts") else None
            outs = _run(g, closed.jaxpr if closed else body,
                        closed.consts if closed else [], ins[len(ins) - len(
                            (closed.jaxpr if closed else body).invars):])
        else:
            outs = _lower(g, eqn, ins)
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def to_onnx(fn: Callable, input_shape, output_names=None, doc: str = ""):
    """The ONNX model (``onnx.ModelProto``) of ``fn(images)``, a closure over its weights, for
    ``images`` of ``input_shape`` whose first entry may be ``"batch"`` (symbolic)."""
    import jax
    import jax.numpy as jnp
    import onnx

    shape = tuple(jax.export.symbolic_shape(BATCH)[0] if d == BATCH else d for d in input_shape)
    closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct(shape, jnp.float32))
    g = Graph(onnx, "images")
    outs = _run(g, closed.jaxpr, closed.consts, ["images"])
    out_avals = [v.aval for v in closed.jaxpr.outvars]
    names = list(output_names or [f"output{i}" for i in range(len(outs))])
    for o, n in zip(outs, names):
        g.nodes.append(g.h.make_node("Identity", [o], [n]))

    def info(name, aval):
        dims = [d if isinstance(d, (int, np.integer)) else str(d) for d in aval.shape]
        return g.h.make_tensor_value_info(name, g.h.np_dtype_to_tensor_dtype(aval.dtype), dims)

    graph = g.h.make_graph(g.nodes, "jaxvision", [info("images", closed.in_avals[0])],
                           [info(n, a) for n, a in zip(names, out_avals)], g.inits)
    model = g.h.make_model(graph, opset_imports=[g.h.make_opsetid("", OPSET)],
                           producer_name="jaxvision", doc_string=doc)
    model.ir_version = 9  # what onnxruntime >= 1.17 reads
    return model
