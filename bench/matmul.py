"""pyllama's sgemm against numpy at the models' shapes: ``pyllama.bench.scripts.matmul``
(``--help`` for the options)."""
import json

from pyllama.bench.scripts import matmul as main

if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
