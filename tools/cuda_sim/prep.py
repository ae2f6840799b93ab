#!/usr/bin/env python3
"""prep.py SRC OUT — rewrites a CUDA source for the CPU emulator (see run.sh):
kernel<<<grid, block[, smem[, stream]]>>>(args);  ->  ::sim::launch(::sim::Cfg(grid, block, ...),
"kernel", (const void*)&kernel, [sim_args = std::make_tuple(args)] { std::apply(kernel,
sim_args); });  (arguments evaluated at the launch, as CUDA does: graphs and deferred streams)  extern __shared__ T name[];  ->  a pointer
to the launch's dynamic shared memory;  __shared__ T name[..]..;  ->  a reference to a per-block
object. Line numbers are kept (#line), so messages name the original file and line."""
import re
import sys


def find_name_start(s, i):
    """Start of the kernel expression ending just before s[i] (identifier, maybe <template args>)."""
    j = i
    while j > 0 and s[j - 1].isspace():
        j -= 1
    if s[j - 1] == ">":
        depth = 0
        while True:
            j -= 1
            if s[j] == ">":
                depth += 1
            elif s[j] == "<":
                depth -= 1
                if depth == 0:
                    break
    while j > 0 and (s[j - 1].isalnum() or s[j - 1] in "_:"):
        j -= 1
    return j


def match_paren(s, i):
    """s[i] == '('; index just past its matching ')'."""
    depth = 0
    for k in range(i, len(s)):
        if s[k] == "(":
            depth += 1
        elif s[k] == ")":
            depth -= 1
            if depth == 0:
                return k + 1
    raise SystemExit("prep.py: unbalanced parentheses")


def rewrite_launches(s):
    out, pos = [], 0
    while True:
        i = s.find("<<<", pos)
        if i < 0:
            out.append(s[pos:])
            return "".join(out)
        start = find_name_start(s, i)
        name = s[start:i].strip()
        e = s.find(">>>", i)
        cfg = s[i + 3:e]
        a = e + 3
        while s[a].isspace():
            a += 1
        assert s[a] == "(", "prep.py: launch without arguments"
        b = match_paren(s, a)
        args = s[a:b]
        out.append(s[pos:start])
        out.append('::sim::launch(::sim::Cfg(%s), "%s", (const void*)&%s, '
                   '[sim_args = std::make_tuple%s] { std::apply(%s, sim_args); })'
                   % (cfg, re.sub(r"\s+", " ", name), name, args, name))
        pos = b


def main():
    src, dst = sys.argv[1], sys.argv[2]
    s = open(src).read()
    s = re.sub(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;",
               r"\1* \2 = reinterpret_cast<\1*>(::sim::dyn_smem());", s)
    s = re.sub(r"__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\s*((?:\[[^\]]+\])*)\s*;",
               r"auto& \2 = ::sim::shared_var<\1\3>(__LINE__);", s)
    s = rewrite_launches(s)
    with open(dst, "w") as f:
        f.write('#line 1 "%s"\n' % src)
        f.write(s)


main()
