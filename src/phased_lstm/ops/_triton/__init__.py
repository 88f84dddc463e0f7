"""The ``"triton"`` backend (private): GPU kernels with the time loop inside. :mod:`.backend`
declares it and loads the rest on first use, so that ``import phased_lstm`` never imports Triton:
:mod:`.library` (the kernels as torch.library ops, their fake implementations and autograd),
:mod:`.launch` (the tiles and the launches), :mod:`.loops` and :mod:`.cell` (the recurrence
kernels) and :mod:`.gate` (the time gate)."""
