// Module init of the emodarts extension. The operators themselves are registered by the
// TORCH_LIBRARY_FRAGMENT blocks of the other sources (static initialisers run when the shared library
// is loaded), so `import emodarts._C` and `torch.ops.load_library(path)` both make them available.
// This is the only source that defines a PyInit; other .cpp/.cu files only register operators.
#include <Python.h>

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif

#define EMODARTS_CONCAT_(a, b) a##b
#define EMODARTS_CONCAT(a, b) EMODARTS_CONCAT_(a, b)
#define EMODARTS_STR_(a) #a
#define EMODARTS_STR(a) EMODARTS_STR_(a)

extern "C" {
PyMODINIT_FUNC EMODARTS_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      EMODARTS_STR(TORCH_EXTENSION_NAME), /* name */
      "emodarts C++/CUDA operators, registered under torch.ops.emodarts", /* doc */
      -1, /* no per-interpreter state */
      nullptr, /* no methods: everything goes through torch.ops */
  };
  return PyModule_Create(&module_def);
}
}
