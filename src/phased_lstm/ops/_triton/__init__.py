"""The ``"triton"`` backend (private): GPU kernels with the time loop inside. :mod:`.backend`
declares it and loads the kernels (:mod:`.recurrence`, :mod:`.gate`) on first use, so that
``import phased_lstm`` never imports Triton."""
