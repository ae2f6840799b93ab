"""Fault injection for the data-parallel tests: make one rank crash, hang or see Ctrl-C
after a chosen optimizer step.

A spec is ``"KIND:R:S"``: rank ``R``, after step ``S``, with ``KIND``

* ``die``: exit at once (``os._exit(1)``, no clean-up, as a crash);
* ``hang``: stop responding (sleep for an hour);
* ``sigint``: send itself SIGINT (as if Ctrl-C reached this rank only).

:func:`fault_hook` turns a spec into a callable taking the trainer (``t.rank``,
``t.step``); it goes into ``pyllama.train._after_step_hook``, which
``Trainer.train`` calls after every step, or is called by a test's own loop.

Run as a script, this file is ``pyllama`` with the hook installed from
``$FAULT_INJECT`` (when set)::

    FAULT_INJECT=die:1:2 mpiexec -n 2 python tests/fault_inject.py train ...
"""
import os
import signal
import sys
import time
from typing import Callable, Optional

ENV = "FAULT_INJECT"
KINDS = ("die", "hang", "sigint")


def fault_hook(spec: Optional[str]) -> Optional[Callable[[object], None]]:
    """The hook for ``spec`` ("die:R:S", "hang:R:S" or "sigint:R:S"); None for an empty spec."""
    if not spec:
        return None
    try:
        kind, r, s = spec.split(":")
        rank, step = int(r), int(s)
    except ValueError:
        raise ValueError(f"{ENV}: expected KIND:RANK:STEP, got {spec!r}") from None
    if kind not in KINDS:
        raise ValueError(f"{ENV}: unknown kind {kind!r} (die, hang or sigint)")

    def hook(trainer) -> None:
        if trainer.rank != rank or trainer.step != step:
            return
        print(f"pyllama.distributed: test fault: rank {rank} {kind} after step {step}", file=sys.stderr, flush=True)
        if kind == "die":
            os._exit(1)
        if kind == "hang":
            time.sleep(3600)
        if kind == "sigint":
            os.kill(os.getpid(), signal.SIGINT)

    return hook


def main(argv=None) -> int:
    """``pyllama`` (the CLI) with ``pyllama.train._after_step_hook`` set from ``$FAULT_INJECT``."""
    import pyllama.cli
    import pyllama.train

    pyllama.train._after_step_hook = fault_hook(os.environ.get(ENV))
    return pyllama.cli.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
