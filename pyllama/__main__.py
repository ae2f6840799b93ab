"""``python -m pyllama``: the ``pyllama`` command (train, generate, ...), plus the paths a
native build needs, as ``python -m pybind11`` prints them::

    python -m pyllama --cmake-dir      # the folder of pyllamaConfig.cmake (-Dpyllama_DIR=...)
    python -m pyllama --include-dir    # pyllama.h and the C++ headers (pyllama/*.h)
    python -m pyllama --c-library      # libpyllama_c.so (the C API)
    python -m pyllama --version
"""
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {"--cmake-dir", "--include-dir", "--c-library", "--version"}
    if argv and argv[0] in flags:
        unknown = [a for a in argv if a not in flags]
        if unknown:
            print(f"python -m pyllama: {unknown[0]!r} cannot follow the path flags "
                  f"({', '.join(sorted(flags))})", file=sys.stderr)
            return 2
        import pyllama

        try:
            for a in argv:
                print({"--cmake-dir": pyllama.cmake_dir, "--include-dir": pyllama.include_dir,
                       "--c-library": pyllama.c_library_path,
                       "--version": lambda: pyllama.__version__}[a]())
        except FileNotFoundError as e:
            print(f"python -m pyllama: {e}", file=sys.stderr)
            return 1
        return 0
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
