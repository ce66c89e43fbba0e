"""The one loader of every compiled part: the C++ library (cpp.py), the CUDA library (cuda.py) and the Triton
kernel modules (triton.py), all from the sources that sources.py finds (a checkout or an installed wheel);
toolchain.py is the compiler lookup setup.py shares."""
