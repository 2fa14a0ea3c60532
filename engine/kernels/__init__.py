"""Compiled kernels: one Cython module per algorithm family.

Contract shared by every kernel (the Python layer in ``engine.functional`` has already
validated everything, so kernels never see bad input and never raise inside ``nogil``):

- arrays are C-contiguous, native byte order, and all of one dtype, float32 or float64
  (the kernels are written over Cython's fused ``floating`` type);
- tensors are NCHW: ``input[N][C][H][W]``, ``weight[C_out][C_in/groups][kH][kW]``,
  ``output[N][C_out][OH][OW]``; the caller allocates ``output`` (its shape fixes OH, OW
  and so the bottom/right padding) and the kernel overwrites every element;
- convolution kernels implement *zero* padding themselves (``pad_top``, ``pad_left``;
  bottom/right follow from the output shape). The other padding modes (reflect,
  replicate, circular) are a compiled pre-pass, ``padding.pad2d``, after which the
  kernel runs with zero padding 0;
- ``bias`` is ``None`` or ``bias[C_out]``; ``relu=True`` clamps the output at 0. Both
  are applied where the output is written, never as another pass over memory;
- ``num_threads`` is the OpenMP team size. Kernels that call BLAS (im2col, winograd)
  call it from inside their own threads and expect the BLAS pool to be held at one
  thread (``engine.threads.blas_single_threaded``), so pools never oversubscribe.

Modules:
    padding    pad2d: reflect / replicate / circular / zeros padding in one pass
    polyphase  split / scatter: a dilated stride-1 convolution's polyphase components
               as a batch of ordinary ones (Winograd's dilated layers)
    direct     conv2d_direct (any parameters), conv2d_depthwise (groups == C_in)
    im2col     conv2d_im2col: column buffer built in bounded slices + GEMM; 1x1 as GEMM
    winograd   Winograd F(m x m, 3 x 3) for m = 2, 4, 6 (float32 on the micro-kernels)
    pool       max_pool2d (with indices), avg_pool2d
    elementwise add_relu: a residual block's relu(out + other), in place, one pass
    ukernels/  C micro-kernels, one object per ISA (baseline, AVX2 + FMA, AVX-512F):
               GEMM register tiles + blocked driver, Winograd tile transforms;
               ukernels.h is the contract, dispatch.c the cpuid check and tables
    _ukernels  their Python face (.pxd for kernel modules): CPU ISA, kernel names,
               the GEMMs on numpy arrays for tests and benchmarks
    _blas.pxd  row-major GEMM over scipy.linalg.cython_blas, the one BLAS shim
    _buildinfo what the build used: OpenMP, flags, instruction-set extensions
"""
