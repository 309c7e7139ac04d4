/* Loaded (RTLD_GLOBAL) before MKL on x86-64 CPUs that are not Intel's, see torch_cpu_math.py:
   MKL asks this function whether the CPU is Intel's before it picks a code path, and on other
   CPUs refuses its AVX2 path (MKL_CBWR_Set returns -3) and runs one whose cos/sin differ from
   the AVX2 path's, which made the seed's rope tables and the golden files. */
int mkl_serv_intel_cpu_true(void) { return 1; }
