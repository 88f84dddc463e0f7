"""The compiled CPU backends (private): ``"fused"`` and ``"sparse"`` (:mod:`.backend`), the
build of their C++ kernels (:mod:`.kernels`, sources in ``csrc/``) and the kernels'
registration as torch.library ops (:mod:`.library`)."""
