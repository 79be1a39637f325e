// The Python module pydiff._C: importing it runs the op registrations of ops.cpp and
// cpu/*.cpp; it also holds one eager fast path for pydiff.ops.lincomb.
//
// Why a fast path: on a small state (16K elements, a robot's action chunk) a solver step's
// memory traffic costs a fraction of reaching the kernel through pydiff.ops.lincomb's Python
// argument handling and torch.ops' generic argument parsing (both measured by
// benchmarks/ops_lincomb.py; figures in BENCHMARKS.md, lincomb). lincomb_fast parses
// the same arguments in C++ and calls the registered op through the dispatcher (so CPU and CUDA
// kernels, version counters and profiling behave as usual), below the autograd keys, which is
// only correct when nothing requires grad, so it bails out in that case. It returns None for
// anything unusual (bad arguments, tensors that require grad, tensor subclasses, active modes or
// functorch transforms), and the Python path then handles the call with its full checks and
// error messages. It never changes results: both paths run the same kernel.
#include <torch/extension.h>
#include <torch/csrc/autograd/variable.h>
#include <ATen/PythonTorchFunctionTLS.h>

#include "cpu/output_cache.h"
#include "lincomb_plan.h"

#include <algorithm>
#include <optional>
#include <vector>

namespace py = pybind11;

namespace pydiff {
namespace {

bool supported(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A tensor the fast path may touch: exactly torch.Tensor or nn.Parameter (a subclass may
// override __torch_function__, so it takes the Python path).
bool plain_tensor(PyObject* o, at::Tensor* out) {
  static PyObject* parameter = [] {
    py::object p = py::module_::import("torch.nn").attr("Parameter");
    return p.release().ptr();
  }();
  if (!THPVariable_CheckExact(o) && Py_TYPE(o) != reinterpret_cast<PyTypeObject*>(parameter))
    return false;
  *out = THPVariable_Unpack(o);
  return true;
}

// Parses one coefficient; false when the slow path has to look at it.
bool parse_coef(PyObject* o, const at::Tensor& x, std::vector<at::Tensor>& tens,
                std::vector<int64_t>& index, std::vector<double>& scales) {
  if (PyFloat_CheckExact(o)) {
    index.push_back(-1);
    scales.push_back(PyFloat_AS_DOUBLE(o));
    return true;
  }
  if (PyLong_CheckExact(o)) {
    const double v = PyLong_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    index.push_back(-1);
    scales.push_back(v);
    return true;
  }
  at::Tensor c;
  if (!plain_tensor(o, &c) || !supported(c.scalar_type())) return false;
  if (c.dim() == 1 && x.dim() > 1 && c.size(0) == x.size(0)) {
    std::vector<int64_t> shape(x.dim(), 1);
    shape[0] = c.size(0);
    c = c.view(shape);  // [B] -> [B, 1, ..., 1]: one coefficient per sample
  } else {
    if (c.dim() > x.dim()) return false;
    const int64_t off = x.dim() - c.dim();
    for (int64_t d = 0; d < c.dim(); ++d)
      if (c.size(d) != 1 && c.size(d) != x.size(off + d)) return false;
  }
  if (c.device() != x.device() && !(c.dim() == 0 && c.device().is_cpu())) return false;
  index.push_back(static_cast<int64_t>(tens.size()));
  tens.push_back(std::move(c));
  scales.push_back(1.0);
  return true;
}

constexpr int64_t kReleaseGilElems = 1 << 16;

// False under modes (TorchDispatchMode, functorch transforms, ...: they put keys in the TLS
// include set) and TorchFunctionModes: the Python path handles those.
bool plain_dispatch() {
  if (!(c10::impl::tls_local_dispatch_key_set().included_ - c10::default_included_set).empty())
    return false;
  return !at::impl::torch_function_mode_enabled();
}

// The terms of a fast call: plain tensors of one shape, device and supported dtype that do not
// require grad (when grad mode is on), on a device with a kernel; false otherwise.
bool parse_terms(PyObject* terms, std::vector<at::Tensor>& ts) {
  if (!(PyList_Check(terms) || PyTuple_Check(terms))) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(terms);
  if (n == 0) return false;
  PyObject** items = PySequence_Fast_ITEMS(terms);
  for (Py_ssize_t i = 0; i < n; ++i) {
    at::Tensor t;
    if (!plain_tensor(items[i], &t)) return false;
    ts.push_back(std::move(t));
  }
  return true;
}

bool usable_terms(const std::vector<at::Tensor>& ts) {
  const at::Tensor& x = ts[0];
  // Only devices with a kernel in this build (a CPU-only build has no CUDA kernels).
  static const bool has_cuda = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("pydiff::lincomb_out", "")
                                   .hasKernelForDispatchKey(c10::DispatchKey::CUDA);
  if (!(x.device().is_cpu() || (x.device().is_cuda() && has_cuda))) return false;
  const bool grad_mode = at::GradMode::is_enabled();
  for (const auto& t : ts) {
    if (!supported(t.scalar_type()) || t.sizes() != x.sizes() || t.device() != x.device())
      return false;
    if (grad_mode && t.requires_grad()) return false;
  }
  return true;
}

py::object lincomb_fast(py::handle terms_obj, py::handle coeffs_obj, py::handle noise_obj,
                        py::handle noise_coeff_obj, py::handle out_obj) {
  const py::object none = py::none();
  if (!plain_dispatch()) return none;
  PyObject* terms = terms_obj.ptr();
  PyObject* coeffs = coeffs_obj.ptr();
  if (!(PyList_Check(terms) || PyTuple_Check(terms))) return none;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(terms);
  // coefficients as a sequence, or as one 1-D tensor of n values (a row of a solver's table)
  at::Tensor coeff_row;
  const bool coeffs_seq = PyList_Check(coeffs) || PyTuple_Check(coeffs);
  if (!coeffs_seq) {
    if (!plain_tensor(coeffs, &coeff_row) || coeff_row.dim() != 1) return none;
  }
  const Py_ssize_t nc = coeffs_seq ? PySequence_Fast_GET_SIZE(coeffs) : coeff_row.size(0);
  if (n == 0 || nc != n) return none;
  const bool has_noise = !noise_obj.is_none();
  if (has_noise == noise_coeff_obj.is_none()) return none;

  std::vector<at::Tensor> ts;
  ts.reserve(n + 1);
  if (!parse_terms(terms, ts)) return none;
  if (has_noise) {
    at::Tensor z;
    if (!plain_tensor(noise_obj.ptr(), &z)) return none;
    ts.push_back(std::move(z));
  }
  if (!usable_terms(ts)) return none;
  const at::Tensor& x = ts[0];
  const bool grad_mode = at::GradMode::is_enabled();
  std::vector<at::Tensor> tens;
  std::vector<int64_t> index;
  std::vector<double> scales;
  tens.reserve(ts.size());
  index.reserve(ts.size());
  scales.reserve(ts.size());
  if (coeffs_seq) {
    PyObject** citems = PySequence_Fast_ITEMS(coeffs);
    for (Py_ssize_t i = 0; i < n; ++i)
      if (!parse_coef(citems[i], x, tens, index, scales)) return none;
  } else {
    if (!supported(coeff_row.scalar_type()) || (grad_mode && coeff_row.requires_grad()) ||
        (coeff_row.device() != x.device() && !coeff_row.device().is_cpu()))
      return none;
    if (coeff_row.device().is_cpu()) {
      // host values: read them here rather than make n 0-dim views (a tensor object each)
      const at::Tensor row = coeff_row.to(at::kDouble);
      const double* v = row.data_ptr<double>();
      const int64_t stride = row.stride(0);
      for (Py_ssize_t i = 0; i < n; ++i) {
        index.push_back(-1);
        scales.push_back(v[i * stride]);
      }
    } else {
      for (Py_ssize_t i = 0; i < n; ++i) {
        index.push_back(static_cast<int64_t>(tens.size()));
        tens.push_back(coeff_row.select(0, i));  // 0-dim view on the device: no host sync
        scales.push_back(1.0);
      }
    }
  }
  if (has_noise && !parse_coef(noise_coeff_obj.ptr(), x, tens, index, scales)) return none;
  for (const auto& c : tens)
    if (grad_mode && c.requires_grad()) return none;

  at::Tensor out;
  const bool has_out = !out_obj.is_none();
  if (has_out) {
    if (!plain_tensor(out_obj.ptr(), &out) || !supported(out.scalar_type()) ||
        out.sizes() != x.sizes() || out.device() != x.device() ||
        (grad_mode && out.requires_grad()))
      return none;
  }

  static auto fn = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydiff::lincomb", "")
                       .typed<at::Tensor(at::TensorList, at::TensorList, at::IntArrayRef,
                                         at::ArrayRef<double>)>();
  static auto fn_out = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("pydiff::lincomb_out", "")
                           .typed<void(at::TensorList, at::TensorList, at::IntArrayRef,
                                       at::ArrayRef<double>, const at::Tensor&)>();
  // Other Python threads may run while a large call works; for a small one, releasing and
  // retaking the GIL would cost more than the call (a robot's action chunk takes microseconds).
  const bool release_gil = x.numel() >= kReleaseGilElems;
  if (has_out) {
    {
      std::optional<py::gil_scoped_release> no_gil;
      if (release_gil) no_gil.emplace();
      at::AutoDispatchBelowADInplaceOrView guard;  // nothing requires grad (checked above)
      fn_out.call(ts, tens, index, scales, out);
    }
    torch::autograd::impl::bump_version(out);  // what ADInplaceOrView would have done
    return py::reinterpret_borrow<py::object>(out_obj);  // the caller's very object
  }
  at::Tensor res;
  {
    std::optional<py::gil_scoped_release> no_gil;
    if (release_gil) no_gil.emplace();
    at::AutoDispatchBelowADInplaceOrView guard;
    res = fn.call(ts, tens, index, scales);
  }
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(res)));
}

// Runs pydiff::lincomb_multi below autograd on parsed arguments; false (nothing run) when an
// entry limit is exceeded or a coefficient requires grad.
bool call_multi(const std::vector<at::Tensor>& terms, const std::vector<at::Tensor>& tens,
                const std::vector<int64_t>& index, const std::vector<double>& scales,
                const std::vector<int64_t>& sources, const std::vector<int64_t>& counts,
                const std::vector<int64_t>& keep, std::vector<at::Tensor>& res) {
  if (sources.size() > static_cast<size_t>(kMaxEntries)) return false;
  if (at::GradMode::is_enabled())
    for (const auto& c : tens)
      if (c.requires_grad()) return false;
  static auto fn = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydiff::lincomb_multi", "")
                       .typed<std::vector<at::Tensor>(
                           at::TensorList, at::TensorList, at::IntArrayRef, at::ArrayRef<double>,
                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  std::optional<py::gil_scoped_release> no_gil;
  if (terms[0].numel() >= kReleaseGilElems) no_gil.emplace();
  at::AutoDispatchBelowADInplaceOrView guard;  // nothing requires grad (checked by callers)
  res = fn.call(terms, tens, index, scales, sources, counts, keep);
  return true;
}

// Eager fast path of pydiff.ops.lincomb_multi (same contract as lincomb_fast).
py::object lincomb_multi_fast(py::handle terms_obj, py::handle rows_obj, py::handle keep_obj) {
  const py::object none = py::none();
  if (!plain_dispatch()) return none;
  std::vector<at::Tensor> ts;
  if (!parse_terms(terms_obj.ptr(), ts) || !usable_terms(ts)) return none;
  const at::Tensor& x = ts[0];
  PyObject* rows = rows_obj.ptr();
  if (!(PyList_Check(rows) || PyTuple_Check(rows))) return none;
  const Py_ssize_t R = PySequence_Fast_GET_SIZE(rows);
  if (R < 1 || R > kMaxOutputs) return none;
  std::vector<int64_t> keep;
  if (keep_obj.is_none()) {
    keep.assign(R, 1);
  } else {
    PyObject* k = keep_obj.ptr();
    if (!(PyList_Check(k) || PyTuple_Check(k)) || PySequence_Fast_GET_SIZE(k) != R) return none;
    for (Py_ssize_t j = 0; j < R; ++j) {
      PyObject* b = PySequence_Fast_GET_ITEM(k, j);
      if (b != Py_True && b != Py_False) return none;
      keep.push_back(b == Py_True ? 1 : 0);
    }
  }
  std::vector<at::Tensor> tens;
  std::vector<int64_t> index, sources, counts;
  std::vector<double> scales;
  const Py_ssize_t K = static_cast<Py_ssize_t>(ts.size());
  for (Py_ssize_t j = 0; j < R; ++j) {
    PyObject* row = PySequence_Fast_GET_ITEM(rows, j);
    if (!(PyList_Check(row) || PyTuple_Check(row))) return none;
    const Py_ssize_t m = PySequence_Fast_GET_SIZE(row);
    if (m > K + j) return none;
    PyObject** items = PySequence_Fast_ITEMS(row);
    int64_t count = 0;
    for (Py_ssize_t k = 0; k < m; ++k) {
      if (items[k] == Py_None) continue;
      if (!parse_coef(items[k], x, tens, index, scales)) return none;
      sources.push_back(k);
      ++count;
    }
    counts.push_back(count);
  }
  std::vector<at::Tensor> res;
  if (!call_multi(ts, tens, index, scales, sources, counts, keep, res)) return none;
  py::list out;
  for (auto& t : res) out.append(py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(t))));
  return std::move(out);
}

// A coefficient known on the host: a Python number or a 0-dim CPU tensor without grad.
bool host_value(PyObject* o, double* v) {
  if (PyFloat_CheckExact(o)) {
    *v = PyFloat_AS_DOUBLE(o);
    return true;
  }
  if (PyLong_CheckExact(o)) {
    *v = PyLong_AsDouble(o);
    if (*v == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    return true;
  }
  at::Tensor c;
  if (!plain_tensor(o, &c) || c.dim() != 0 || !c.device().is_cpu() || c.requires_grad())
    return false;
  switch (c.scalar_type()) {
    case at::kDouble: *v = *static_cast<const double*>(c.const_data_ptr()); return true;
    case at::kFloat: *v = *static_cast<const float*>(c.const_data_ptr()); return true;
    case at::kHalf: *v = static_cast<float>(*static_cast<const at::Half*>(c.const_data_ptr())); return true;
    case at::kBFloat16:
      *v = static_cast<float>(*static_cast<const at::BFloat16*>(c.const_data_ptr()));
      return true;
    default: return false;
  }
}

// Eager fast path of pydiff.solvers.combine: tensors and pydiff.Linear terms (a model's x0/eps
// as a map of the network output). Builds the call the Python path builds (one lincomb when
// every Linear composes into the stage, else one lincomb_multi). Returns (result, kept or
// None), or None for anything but tensor states of plain tensors without grad whose repeated
// sources have host coefficients.
py::object fold_fast(py::handle terms_obj, py::handle coeffs_obj, py::handle noise_obj,
                     py::handle noise_coeff_obj, py::handle keep_obj, py::handle linear_type) {
  const py::object none = py::none();
  if (!plain_dispatch()) return none;
  PyObject* terms = terms_obj.ptr();
  PyObject* coeffs = coeffs_obj.ptr();
  if (!(PyList_Check(terms) || PyTuple_Check(terms)) ||
      !(PyList_Check(coeffs) || PyTuple_Check(coeffs)))
    return none;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(terms);
  if (n == 0 || PySequence_Fast_GET_SIZE(coeffs) != n) return none;
  PyTypeObject* linear = reinterpret_cast<PyTypeObject*>(linear_type.ptr());
  PyObject** titems = PySequence_Fast_ITEMS(terms);
  PyObject** citems = PySequence_Fast_ITEMS(coeffs);

  // Scratch vectors kept per thread (cleared, capacity kept): a step on a small state costs a
  // few microseconds, and a dozen fresh heap vectors per call were a measurable part of it.
  // Nothing below re-enters fold_fast on the same thread (plain_dispatch() excludes modes).
  thread_local std::vector<PyObject*> input_objs;  // distinct tensors, by identity
  thread_local std::vector<at::Tensor> inputs;
  thread_local std::vector<PyObject*> linears;     // distinct Linear terms
  thread_local std::vector<py::object> holders;    // keeps basis/coefs tuples alive
  thread_local std::vector<at::Tensor> tens, used;  // coefficient tensors, lincomb's terms
  // tensors and Python references are dropped on every exit, not at the next call
  struct Release {
    ~Release() {
      inputs.clear();
      holders.clear();
      tens.clear();
      used.clear();
    }
  } release;
  input_objs.clear();
  linears.clear();
  static PyObject* basis_name = PyUnicode_InternFromString("basis");
  static PyObject* coefs_name = PyUnicode_InternFromString("coefs");
  auto slot_of = [&](PyObject* o) -> int {
    for (size_t q = 0; q < input_objs.size(); ++q)
      if (input_objs[q] == o) return static_cast<int>(q);
    return -1;
  };
  auto add_input = [&](PyObject* o) -> bool {
    if (slot_of(o) >= 0) return true;
    at::Tensor t;
    if (!plain_tensor(o, &t)) return false;
    input_objs.push_back(o);
    inputs.push_back(std::move(t));
    return true;
  };
  thread_local std::vector<std::pair<PyObject*, PyObject*>> lin_parts;  // (basis, coefs)
  lin_parts.clear();
  for (Py_ssize_t k = 0; k < n; ++k) {
    PyObject* t = titems[k];
    if (Py_TYPE(t) == linear) {
      if (std::find(linears.begin(), linears.end(), t) != linears.end()) continue;
      py::object basis = py::reinterpret_steal<py::object>(PyObject_GetAttr(t, basis_name));
      py::object cs = py::reinterpret_steal<py::object>(PyObject_GetAttr(t, coefs_name));
      if (!basis || !cs) {
        PyErr_Clear();
        return none;
      }
      if (!PyTuple_Check(basis.ptr()) || !PyTuple_Check(cs.ptr()) ||
          PyTuple_GET_SIZE(basis.ptr()) != PyTuple_GET_SIZE(cs.ptr()))
        return none;
      for (Py_ssize_t b = 0; b < PyTuple_GET_SIZE(basis.ptr()); ++b)
        if (!add_input(PyTuple_GET_ITEM(basis.ptr(), b))) return none;
      linears.push_back(t);
      lin_parts.emplace_back(basis.ptr(), cs.ptr());
      holders.push_back(std::move(basis));
      holders.push_back(std::move(cs));
    } else if (!add_input(t)) {
      return none;
    }
  }
  const bool has_noise = !noise_obj.is_none();
  if (has_noise && !add_input(noise_obj.ptr())) return none;
  if (!usable_terms(inputs)) return none;
  const at::Tensor& x = inputs[0];
  const int nin = static_cast<int>(inputs.size());
  const int nlin = static_cast<int>(linears.size());

  // rows as (source, coefficient); a repeated source needs its coefficients summed, which
  // only host values allow here (as the Python path sums them, in the same order)
  struct Entry {
    int src;
    PyObject* obj;  // the coefficient object, or nullptr when `val` holds a host value
    double val;
  };
  // stable insertion sort by source: a handful of entries (std::stable_sort allocates)
  auto sort_by_source = [](std::vector<Entry>& v) {
    for (size_t a = 1; a < v.size(); ++a)
      for (size_t b = a; b > 0 && v[b - 1].src > v[b].src; --b) std::swap(v[b - 1], v[b]);
  };
  auto host = [](const Entry& e, double* v) -> bool {
    if (e.obj == nullptr) {
      *v = e.val;
      return true;
    }
    return host_value(e.obj, v);
  };
  thread_local std::vector<std::vector<Entry>> rows;
  if (rows.size() < static_cast<size_t>(nlin + 1)) rows.resize(nlin + 1);
  for (int j = 0; j <= nlin; ++j) rows[j].clear();
  auto put = [&](int j, int src, PyObject* c) -> bool {
    if (c == Py_None) return true;
    for (auto& e : rows[j]) {
      if (e.src != src) continue;
      double a, b;
      if (!host(e, &a) || !host_value(c, &b)) return false;
      e.obj = nullptr;
      e.val = a + b;
      return true;
    }
    rows[j].push_back({src, c, 0.0});
    return true;
  };
  for (int l = 0; l < nlin; ++l) {
    PyObject* basis = lin_parts[l].first;
    PyObject* cs = lin_parts[l].second;
    for (Py_ssize_t b = 0; b < PyTuple_GET_SIZE(basis); ++b)
      if (!put(l, slot_of(PyTuple_GET_ITEM(basis, b)), PyTuple_GET_ITEM(cs, b))) return none;
  }
  for (Py_ssize_t k = 0; k < n; ++k) {
    PyObject* t = titems[k];
    const int src = Py_TYPE(t) == linear
        ? nin + static_cast<int>(std::find(linears.begin(), linears.end(), t) - linears.begin())
        : slot_of(t);
    if (!put(nlin, src, citems[k])) return none;
  }
  if (has_noise) {
    if (noise_coeff_obj.is_none()) return none;
    if (!put(nlin, slot_of(noise_obj.ptr()), noise_coeff_obj.ptr())) return none;
  }
  int keep_at = -1;
  if (!keep_obj.is_none()) {
    auto it = std::find(linears.begin(), linears.end(), keep_obj.ptr());
    if (it == linears.end()) return none;
    keep_at = static_cast<int>(it - linears.begin());
  }
  for (int j = 0; j <= nlin; ++j)  // by source, as the Python path's dense rows order them
    sort_by_source(rows[j]);

  // A Linear that is not written and whose coefficients are all host values folds into the
  // last row: its coefficients times the last row's weight on it (see compose_linears in
  // pydiff/solvers/base.py, which does the same arithmetic in the same order)
  std::vector<Entry>& last = rows[nlin];
  thread_local std::vector<int> row_of;  // the output row a Linear keeps, -1 once composed
  row_of.assign(nlin, -1);
  int nrows = 0;
  for (int l = 0; l < nlin; ++l) {
    bool composable = l != keep_at;
    double weight = 0.0;
    bool weighted = false;
    for (auto& e : last) {
      if (e.src != nin + l) continue;
      composable = composable && host(e, &weight);
      weighted = true;
    }
    for (auto& e : rows[l]) {
      double v;
      composable = composable && host(e, &v);
      for (auto& q : last)
        if (q.src == e.src) composable = composable && host(q, &v);
    }
    if (!composable) {
      row_of[l] = nrows++;
      continue;
    }
    if (weighted) {
      for (auto& e : rows[l]) {
        double v;
        host(e, &v);
        auto at = std::find_if(last.begin(), last.end(),
                               [&](const Entry& q) { return q.src == e.src; });
        // rounded before the sum, as Python rounds it (no fused multiply-add)
        volatile double term = weight * v;
        if (at == last.end()) {
          last.push_back({e.src, nullptr, term});
        } else {
          double a;
          host(*at, &a);  // checked above
          at->obj = nullptr;
          at->val = a + term;
        }
      }
    }
    last.erase(std::remove_if(last.begin(), last.end(),
                              [&](const Entry& q) { return q.src == nin + l; }),
               last.end());
  }
  sort_by_source(last);
  if (nrows + 1 > kMaxOutputs) return none;

  thread_local std::vector<int64_t> index, sources, counts, keep;
  thread_local std::vector<double> scales;
  tens.clear();
  index.clear();
  sources.clear();
  counts.clear();
  keep.clear();
  scales.clear();
  auto parse = [&](const Entry& e) -> bool {
    if (e.obj != nullptr) return parse_coef(e.obj, x, tens, index, scales);
    index.push_back(-1);
    scales.push_back(e.val);
    return true;
  };
  if (nrows == 0) {
    // every Linear composed: one plain lincomb over the sources the last row reads
    used.clear();
    for (auto& e : last) {
      if (!parse(e)) return none;
      used.push_back(inputs[e.src]);
    }
    if (used.empty()) return none;
    for (const auto& c : tens)
      if (at::GradMode::is_enabled() && c.requires_grad()) return none;
    static auto fn = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("pydiff::lincomb", "")
                         .typed<at::Tensor(at::TensorList, at::TensorList, at::IntArrayRef,
                                           at::ArrayRef<double>)>();
    if (used[0].scalar_type() != x.scalar_type()) {
      // the result takes the state's dtype: read x with weight 0 first
      used.insert(used.begin(), x);
      index.insert(index.begin(), -1);
      scales.insert(scales.begin(), 0.0);
    }
    at::Tensor res;
    {
      std::optional<py::gil_scoped_release> no_gil;
      if (x.numel() >= kReleaseGilElems) no_gil.emplace();
      at::AutoDispatchBelowADInplaceOrView guard;
      res = fn.call(used, tens, index, scales);
    }
    return py::make_tuple(py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(res))),
                          none);
  }
  for (int l = 0; l < nlin; ++l) {
    if (row_of[l] < 0) continue;
    for (auto& e : rows[l]) {
      if (!parse(e)) return none;
      sources.push_back(e.src);
    }
    counts.push_back(static_cast<int64_t>(rows[l].size()));
    keep.push_back(l == keep_at ? 1 : 0);
  }
  for (auto& e : last) {
    if (!parse(e)) return none;
    sources.push_back(e.src < nin ? e.src : nin + row_of[e.src - nin]);
  }
  counts.push_back(static_cast<int64_t>(last.size()));
  keep.push_back(1);
  std::vector<at::Tensor> res;
  if (!call_multi(inputs, tens, index, scales, sources, counts, keep, res)) return none;
  py::object result = py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(res.back())));
  py::object kept = keep_at >= 0
      ? py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(res.front())))
      : none;
  return py::make_tuple(result, kept);
}

}  // namespace
}  // namespace pydiff

#define PYDIFF_STR2(x) #x
#define PYDIFF_STR(x) PYDIFF_STR2(x)

PYBIND11_MODULE(_C, m) {
  m.doc() = "pydiff's compiled kernels (ops registered as torch.ops.pydiff.*)";
  m.attr("cpu_capability") = PYDIFF_STR(CPU_CAPABILITY);
#ifdef PYDIFF_CPU_ISA_AUTO
  m.attr("cpu_isa_auto") = true;  // chosen by setup.py from the build machine's CPU
#else
  m.attr("cpu_isa_auto") = false;  // PYDIFF_CPU_ISA or another build system chose it
#endif
  m.def("lincomb_fast", &pydiff::lincomb_fast, py::arg("terms"), py::arg("coeffs"),
        py::arg("noise"), py::arg("noise_coeff"), py::arg("out"),
        "Eager fast path of pydiff.ops.lincomb; returns None when the Python path must run.");
  m.def("fold_fast", &pydiff::fold_fast, py::arg("terms"), py::arg("coeffs"), py::arg("noise"),
        py::arg("noise_coeff"), py::arg("keep"), py::arg("linear_type"),
        "Eager fast path of pydiff.solvers.combine (tensor and pydiff.Linear terms); None when "
        "the Python path must run.");
  m.def("lincomb_multi_fast", &pydiff::lincomb_multi_fast, py::arg("terms"), py::arg("rows"),
        py::arg("keep"),
        "Eager fast path of pydiff.ops.lincomb_multi; returns None when the Python path must run.");
  m.def("output_cache_bytes", &pydiff::output_cache_bytes,
        "Bytes of freed lincomb results the CPU output cache holds for reuse.");
  m.def("output_cache_clear", &pydiff::output_cache_clear,
        "Release the CPU output cache's blocks; returns the bytes released.");
  m.def("output_cache_limit", &pydiff::output_cache_limit,
        "The CPU output cache's bound in bytes (PYDIFF_CPU_CACHE_MB).");
}
