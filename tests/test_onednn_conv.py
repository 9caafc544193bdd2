"""conv_impl='onednn' (ssmtl_jax/base/onednn_conv.py, on base/onednn.py and
base/xla_ffi.py): the oneDNN convolution computes what XLA's does, forward
and backward, jitted, through both ways of calling it (XLA FFI custom call,
jax.pure_callback), and a whole train step with it matches one with
conv_impl='xla'. The hand-copied XLA FFI structs match the installed jaxlib's
header, and a jaxlib that speaks another FFI API version is an error, not a
crash.

Skipped as a module where no oneDNN distribution is installed (install
``onednn-cpu-gomp``, or set SSMTL_DNNL_LIB); fails where one is and libdnnl
does not load.
"""

import os
import re
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmtl_jax.model import network
from ssmtl_jax.base import onednn
from ssmtl_jax.base import onednn_conv
from ssmtl_jax.base import xla_ffi
from tests import optional

# Skipped where no oneDNN distribution is installed; where one is (CI
# installs the [onednn] extra) a library that does not load fails.
optional.require(onednn.library, onednn.OneDnnUnavailableError,
                 onednn.DISTRIBUTIONS)

# (B, T, H, W, C, O): thin first layer (C = 1), odd and unequal H / W, the
# narrow model's 16 -> 32.
SHAPES = [(2, 7, 9, 11, 1, 16), (3, 6, 7, 5, 16, 32), (2, 7, 8, 8, 16, 8)]
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(params=onednn_conv.CALLS)
def conv(request):
  """conv3d through the XLA FFI custom call, and through pure_callback."""
  return lambda x, k: onednn_conv.conv3d(x, k, call=request.param)


def _inputs(shape, seed=0):
  b, t, h, w, c, o = shape
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, t, h, w, c), np.float32)
  k = rng.standard_normal((3, 3, 3, c, o), np.float32) / np.sqrt(27 * c)
  return jnp.asarray(x), jnp.asarray(k)


def _close(a, b, **tol):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  scale = max(1.0, float(np.abs(b).max()))  # relative to the largest value
  np.testing.assert_allclose(a / scale, b / scale, **(tol or TOL))


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_xla(shape, conv):
  x, k = _inputs(shape)
  want = network._conv3d_xla(x, k)  # pylint: disable=protected-access
  got = jax.jit(conv)(x, k)
  assert got.shape == want.shape and got.dtype == jnp.float32
  _close(got, want)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_xla(shape, conv):
  x, k = _inputs(shape, seed=1)

  def grads(conv_fn):
    # A non-linear loss, so that the output cotangent is not constant.
    loss = lambda x, k: jnp.sum(jnp.sin(conv_fn(x, k)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)

  gx, gk = grads(conv)
  wx, wk = grads(network._conv3d_xla)  # pylint: disable=protected-access
  _close(gx, wx)
  _close(gk, wk)


def test_numpy_front_end_matches_xla():
  """The library called directly (no JAX in between)."""
  x, k = _inputs(SHAPES[1])
  lib = onednn.library()
  y = lib.forward(np.asarray(x), np.asarray(k))
  _close(y, network._conv3d_xla(x, k))  # pylint: disable=protected-access
  g = np.ones_like(y)
  dx, dk = lib.backward(np.asarray(x), np.asarray(k), g)
  _, vjp = jax.vjp(network._conv3d_xla, x, k)  # pylint: disable=protected-access
  wx, wk = vjp(jnp.asarray(g))
  _close(dx, wx)
  _close(dk, wk)


def test_bfloat16_is_computed_in_float32():
  x, k = _inputs(SHAPES[2])
  xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
  got = jax.jit(onednn_conv.conv3d)(xb, kb)
  assert got.dtype == jnp.bfloat16
  want = network._conv3d_xla(xb.astype(jnp.float32), kb.astype(jnp.float32))  # pylint: disable=protected-access
  _close(got, want, rtol=1e-2, atol=1e-2)


def test_batch_sharded_over_devices_matches_xla(conv):
  """Under jit over a data mesh of every device (the trainer's main path;
  8 fake CPU devices in the test suite), with the batch sharded."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  batch_sharding = jax.sharding.NamedSharding(mesh,
                                              jax.sharding.PartitionSpec("data"))
  x, k = _inputs((len(jax.devices()), 3, 6, 6, 4, 8))
  x = jax.device_put(x, batch_sharding)
  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
  got = jax.jit(jax.value_and_grad(loss(conv),
                                   argnums=(0, 1)))(x, k)
  want = jax.jit(jax.value_and_grad(loss(network._conv3d_xla),  # pylint: disable=protected-access
                                    argnums=(0, 1)))(x, k)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    _close(a, b)


def test_train_step_matches_xla():
  """One real train step (all four tasks, the real model) with
  conv_impl='onednn' equals one with 'xla': same loss, same gradients, same
  batch-norm statistics."""
  from tests import test_options  # pylint: disable=g-import-not-at-top
  results = {}
  for impl in ("xla", "onednn"):
    setup = test_options._Setup(test_options._config(  # pylint: disable=protected-access
        **{"model.conv_impl": impl}))
    grads, metrics = setup.run(test_options._batch())  # pylint: disable=protected-access
    results[impl] = (grads, metrics, setup.state.batch_stats)
  (g_x, m_x, s_x), (g_o, m_o, s_o) = results["xla"], results["onednn"]
  assert m_x.keys() == m_o.keys()
  for key in m_x:
    np.testing.assert_allclose(m_o[key], m_x[key], rtol=1e-4, atol=1e-5,
                               err_msg=key)
  for a, b in zip(jax.tree.leaves(g_o), jax.tree.leaves(g_x)):
    _close(a, b, rtol=1e-3, atol=1e-4)
  for a, b in zip(jax.tree.leaves(s_o), jax.tree.leaves(s_x)):
    _close(a, b)


def test_bad_arguments_are_rejected():
  x, k = _inputs(SHAPES[0])
  with pytest.raises(ValueError, match="kernel"):
    onednn_conv.conv3d(x, k[:, :, :2])
  with pytest.raises(ValueError, match="call"):
    onednn_conv.conv3d(x, k, call="cffi")


def test_missing_library_is_one_clear_error(monkeypatch):
  monkeypatch.delenv(onednn.ENV_VAR, raising=False)
  monkeypatch.setattr(onednn, "DISTRIBUTIONS", ())
  with pytest.raises(onednn.OneDnnUnavailableError) as e:
    onednn.find_library()
  message = str(e.value)
  assert "\n" not in message
  assert "onednn" in message and onednn.ENV_VAR in message
  with pytest.raises(onednn.OneDnnUnavailableError, match=onednn.ENV_VAR):
    onednn._OneDnn("/nonexistent/libdnnl.so.3")  # pylint: disable=protected-access


def _c_api_header() -> str:
  """The installed jaxlib's xla/ffi/api/c_api.h, comments removed."""
  path = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def test_ffi_structs_match_the_jaxlib_header():
  """The structs and enum values xla_ffi copied by hand are those of the
  installed jaxlib (a field renamed, moved or removed fails here, before any
  handler reads a wrong offset), and its FFI API major version is ours."""
  text = _c_api_header()
  version = tuple(int(re.search(rf"#define XLA_FFI_API_{part} (\d+)",
                                text).group(1))
                  for part in ("MAJOR", "MINOR"))
  assert version[0] == xla_ffi.API_VERSION[0]
  assert version >= xla_ffi.API_VERSION
  for c_name, struct in xla_ffi.C_STRUCTS.items():
    names = (c_name,) + xla_ffi.C_STRUCT_ALIASES.get(c_name, ())
    bodies = [re.search(rf"struct {n} {{(.*?)}}", text, re.S) for n in names]
    body = next((b for b in bodies if b), None)
    assert body, names
    # The last identifier of each declaration (`int64_t* dims`,
    # `_XLA_FFI_API_STRUCT_FIELD(XLA_FFI_Error_Create)`) is the field.
    fields = [re.findall(r"\w+", decl)[-1]
              for decl in body.group(1).split(";") if decl.strip()]
    ours = [field[0] for field in struct._fields_]  # pylint: disable=protected-access
    assert fields[:len(ours)] == ours, c_name
  for c_name, value in xla_ffi.C_ENUMS.items():
    assert re.search(rf"\b{c_name} = {value}\b", text), c_name


def test_ffi_version_mismatch_is_an_error_not_a_call(monkeypatch):
  """A handler that speaks another FFI API version than XLA is refused when
  it is registered: the project's FfiAbiError (one line), and the handler's
  body never runs, not even when the target is called anyway."""
  calls = []
  fn = xla_ffi.handler(lambda args, rets: calls.append(args), "test")
  monkeypatch.setattr(xla_ffi, "API_VERSION",
                      (xla_ffi.API_VERSION[0] + 1, 0))
  with pytest.raises(xla_ffi.FfiAbiError, match="API version") as e:
    xla_ffi.register("ssmtl_test_ffi_version_mismatch", fn)
  assert "\n" not in str(e.value)
  with pytest.raises(Exception, match="ssmtl_test_ffi_version_mismatch"):
    jax.ffi.ffi_call("ssmtl_test_ffi_version_mismatch",
                     jax.ShapeDtypeStruct((2,), jnp.float32))(jnp.ones(2))
  assert not calls


def test_auto_picks_onednn_on_one_cpu_device(monkeypatch):
  """conv_impl='auto' on the CPU: oneDNN where it is usable and the process
  has one device; 'fast' under several devices or without oneDNN, said once
  in the log (the reason named)."""
  assert network.resolve_conv_impl("xla") == "xla"
  assert network.resolve_conv_impl("auto") == "fast"  # 8 test devices
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  onednn_conv.usable.cache_clear()  # pylint: disable=protected-access
  assert network.resolve_conv_impl("auto") == "onednn"
  onednn_conv.usable.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(onednn_conv, "unusable_reason", lambda: "no libdnnl")
  with mock.patch.object(onednn_conv.logging, "info") as info:
    assert network.resolve_conv_impl("auto") == "fast"
    assert network.resolve_conv_impl("auto") == "fast"
  assert info.call_count == 1 and "no libdnnl" in info.call_args[0][2]
  onednn_conv.usable.cache_clear()  # pylint: disable=protected-access


def test_unusable_reason_names_the_missing_library(monkeypatch):
  assert onednn_conv.unusable_reason() == ""
  def missing():
    raise onednn.OneDnnUnavailableError("oneDNN not found: install it")
  monkeypatch.setattr(onednn, "library", missing)
  assert "oneDNN not found" in onednn_conv.unusable_reason()
