#!/usr/bin/env python3
"""Generate csrc/core/unicode_tables.{h,cpp}: per-code-point flags for the pre-tokenizer scanners
and properties for the regex engine (csrc/core/regex.*).

    python tools/gen_unicode_tables.py            # writes csrc/core/unicode_tables.{h,cpp}

Table 1 (cp_flags, the preset scanners): each code point gets a byte of flags:

    LETTER    \\p{L}      (Lu Ll Lt Lm Lo)
    NUMBER    \\p{N}      (Nd Nl No)
    SPACE     \\s         (the Unicode White_Space property, as Rust's regex crate uses)
    UPPERISH  [\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]   (o200k's first letter class)
    LOWERISH  [\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]         (o200k's second letter class)

Categories come from Python's ``unicodedata``. That module is tied to the running
Python's Unicode version (3.11: Unicode 14), while tiktoken's regex engine (Rust's
``regex`` crate) knows a newer one. When tiktoken is importable the script asks its
regex engine which code points each class matches (one pass over every code point,
with a byte-only vocabulary) and adds the characters later Unicode versions assigned;
it checks that nothing unicodedata assigns is missing there. So the tables match the
reference implementation exactly. The stored tables are two-level: a stage-1 index of
256-code-point blocks into deduplicated stage-2 blocks of flag bytes.

Table 2 (cp_props, the regex engine): a byte per code point: the general category (0..29, in
the order of GCS below) in the low 5 bits, PROP_WORD (\\w) and PROP_SPACE (\\s). The engine
follows Oniguruma, the regex engine of the `tokenizers` library, so when `tokenizers` is
importable the script asks Oniguruma itself which code points each of \\p{Lu} ... \\p{Cn}, \\w
and \\s matches (one Replace normalizer pass over every code point each) and takes its answer
(it is newer than unicodedata: Unicode 16 in tokenizers 0.23); without it, categories come from
unicodedata and \\w is approximated by [\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}].

Table 3 (fold_next, the regex engine's (?i)): the code points that match each other under
Oniguruma's case-insensitive matching, one character against one character (k K U+212A; s S
U+017F; ...), as cycles: fold_next(c) is the next member of c's set. Asked of Oniguruma
((?i:\\x{c}) against every cased character) when `tokenizers` is importable, else grouped by
str.casefold() where that is one character. Foldings to several characters (ß and "ss") are not
in it.
"""
from __future__ import annotations

import os
import sys
import unicodedata

LETTER, NUMBER, SPACE, UPPERISH, LOWERISH = 1, 2, 4, 8, 16

# The White_Space property (PropList.txt); stable since Unicode 6.3.
WHITE_SPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
               0x2028, 0x2029, 0x202F, 0x205F, 0x3000]

CLASSES = [
    (LETTER, {"Lu", "Ll", "Lt", "Lm", "Lo"}, r"\p{L}"),
    (NUMBER, {"Nd", "Nl", "No"}, r"\p{N}"),
    (UPPERISH, {"Lu", "Lt", "Lm", "Lo", "Mn", "Mc", "Me"}, r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"),
    (LOWERISH, {"Ll", "Lm", "Lo", "Mn", "Mc", "Me"}, r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"),
]


def all_code_points() -> str:
    return "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)


def tiktoken_classes(text: str):
    """{flag: set of code points} as tiktoken's regex engine matches them, or None."""
    try:
        import tiktoken
    except ImportError:
        return None
    ranks = {bytes([i]): i for i in range(256)}
    out = {}
    for flag, _, pat in CLASSES + [(SPACE, None, r"\s")]:
        enc = tiktoken.Encoding("probe", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
        out[flag] = set(map(ord, bytes(enc.encode_ordinary(text)).decode("utf-8")))
    return out


def build_flags():
    flags = bytearray(0x110000)
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        f = 0
        for flag, cats, _ in CLASSES:
            if cat in cats:
                f |= flag
        flags[cp] = f
    for cp in WHITE_SPACE:
        flags[cp] |= SPACE
    source = f"unicodedata (Unicode {unicodedata.unidata_version})"
    ref = tiktoken_classes(all_code_points())
    if ref is not None:
        import tiktoken
        added = 0
        for flag, cps in ref.items():
            mine = {cp for cp in range(0x110000) if flags[cp] & flag}
            missing = mine - cps
            if missing:
                sys.exit(f"tiktoken's regex lacks {len(missing)} code points unicodedata puts in class {flag}, "
                         f"e.g. {sorted(missing)[:5]}: check the versions")
            for cp in cps - mine:
                flags[cp] |= flag
                added += 1
        source += f" + {added} later assignments from tiktoken {tiktoken.__version__}'s regex engine"
    return flags, source


GCS = "Lu Ll Lt Lm Lo Mn Mc Me Nd Nl No Pc Pd Ps Pe Pi Pf Po Sm Sc Sk So Zs Zl Zp Cc Cf Cs Co Cn".split()
PROP_WORD, PROP_SPACE = 0x20, 0x40


def onig_classes(text: str):
    """{name: set of code points} as Oniguruma (through `tokenizers`) matches \\p{name}, \\w, \\s; or None."""
    try:
        from tokenizers import Regex, normalizers
    except ImportError:
        return None
    def members(neg):
        return set(map(ord, normalizers.Replace(Regex(neg), "").normalize_str(text)))
    out = {g: members(r"\P{%s}" % g) for g in GCS if g != "Cs"}
    out["Cs"] = set()
    out["w"] = members(r"\W")
    out["s"] = members(r"\S")
    return out


def build_props():
    props = bytearray(0x110000)
    source = f"unicodedata (Unicode {unicodedata.unidata_version})"
    ref = onig_classes(all_code_points())
    if ref is None:
        word = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "Pc"}
        for cp in range(0x110000):
            cat = unicodedata.category(chr(cp))
            props[cp] = GCS.index(cat) | (PROP_WORD if cat in word else 0)
        for cp in WHITE_SPACE:
            props[cp] |= PROP_SPACE
        return props, source
    import tokenizers
    seen = {}
    for g in GCS:
        for cp in ref[g]:
            if cp in seen:
                sys.exit(f"Oniguruma puts U+{cp:04X} in both \\p{{{seen[cp]}}} and \\p{{{g}}}")
            seen[cp] = g
    changed = 0
    for cp in range(0x110000):
        g = "Cs" if 0xD800 <= cp < 0xE000 else seen.get(cp)
        if g is None:
            sys.exit(f"Oniguruma gives U+{cp:04X} no general category")
        changed += g != unicodedata.category(chr(cp))
        props[cp] = GCS.index(g) | (PROP_WORD if cp in ref["w"] else 0) | (PROP_SPACE if cp in ref["s"] else 0)
    return props, source + f"; Oniguruma in tokenizers {tokenizers.__version__} ({changed} categories differ)"


def cased_code_points(text: str):
    """Characters with case (Python's mappings, or a cased category by Oniguruma)."""
    out = {ord(ch) for ch in text if ch.lower() != ch or ch.upper() != ch or ch.casefold() != ch or ch.title() != ch}
    try:
        from tokenizers import Regex, normalizers
    except ImportError:
        return sorted(out)
    for g in ("Lu", "Ll", "Lt"):
        out |= set(map(ord, normalizers.Replace(Regex(r"\P{%s}" % g), "").normalize_str(text)))
    return sorted(out)


def build_fold():
    """{code point: next code point of its case-insensitive set}, for sets of two or more."""
    cands = cased_code_points(all_code_points())
    orbits = {}
    try:
        from tokenizers import Regex, normalizers
        joined = "\0".join(map(chr, cands))
        for c in cands:
            out = normalizers.Replace(Regex(r"(?i:\x{%X})" % c), "").normalize_str(joined).split("\0")
            orbits[c] = frozenset(cands[i] for i, x in enumerate(out) if x == "")
    except ImportError:
        groups = {}
        for c in cands:
            f = chr(c).casefold()
            groups.setdefault(f if len(f) == 1 else chr(c), set()).add(c)
        for g in groups.values():
            for c in g:
                orbits[c] = frozenset(g)
    nxt = {}
    for c, orbit in orbits.items():
        if any(orbits.get(x) != orbit for x in orbit):
            sys.exit(f"case-insensitive matching of U+{c:04X} is not an equivalence: {sorted(orbit)}")
        if len(orbit) > 1:
            members = sorted(orbit)
            nxt[c] = members[(members.index(c) + 1) % len(members)]
    return nxt


def two_stage(flags):
    blocks, index, stage1 = [], {}, []
    for b in range(0x110000 // 256):
        blk = bytes(flags[b * 256:(b + 1) * 256])
        if blk not in index:
            index[blk] = len(blocks)
            blocks.append(blk)
        stage1.append(index[blk])
    return stage1, blocks


def emit(lines, name1, name2, stage1, blocks):
    lines += [f"const uint16_t {name1}[{len(stage1)}] = {{"]
    for i in range(0, len(stage1), 24):
        lines.append("  " + ",".join(str(x) for x in stage1[i:i + 24]) + ",")
    lines += ["};", "", f"const uint8_t {name2}[{len(blocks) * 256}] = {{"]
    for bi, blk in enumerate(blocks):
        lines.append(f"  // block {bi}")
        for i in range(0, 256, 32):
            lines.append("  " + ",".join(str(x) for x in blk[i:i + 32]) + ",")
    lines += ["};", ""]


def main() -> None:
    flags, source = build_flags()
    stage1, blocks = two_stage(flags)
    props, psource = build_props()
    pstage1, pblocks = two_stage(props)
    gc_enum = "\n".join(f"  kGc{g} = {i}," for i, g in enumerate(GCS))
    fold = build_fold()
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "core")
    header = f"""// unicode_tables.h — GENERATED by tools/gen_unicode_tables.py; do not edit.
// Source: {source}.
//
//   uint8_t f = pyllama::unicode::cp_flags(0x4E2D);   // '中'
//   bool letter = f & pyllama::unicode::kLetter;       // true
#pragma once
#include <cstdint>

namespace pyllama {{
namespace unicode {{

enum : uint8_t {{
  kLetter = {LETTER},     // \\p{{L}}
  kNumber = {NUMBER},     // \\p{{N}}
  kSpace = {SPACE},      // \\s (White_Space)
  kUpperish = {UPPERISH},   // [\\p{{Lu}}\\p{{Lt}}\\p{{Lm}}\\p{{Lo}}\\p{{M}}]
  kLowerish = {LOWERISH},  // [\\p{{Ll}}\\p{{Lm}}\\p{{Lo}}\\p{{M}}]
}};

extern const uint16_t kStage1[{len(stage1)}];   // block of 256 code points -> stage-2 block
extern const uint8_t kStage2[{len(blocks) * 256}];  // flag bytes, {len(blocks)} blocks

// Flags of a code point; 0 beyond U+10FFFF.
inline uint8_t cp_flags(uint32_t cp) {{
  return cp < 0x110000 ? kStage2[(uint32_t)kStage1[cp >> 8] * 256u + (cp & 0xFFu)] : 0;
}}

// ---- Properties for the regex engine (csrc/core/regex.*), as Oniguruma has them.
// Source: {psource}.
//
//   uint8_t p = pyllama::unicode::cp_props(0x4E2D);
//   (p & kPropGc) == kGcLo;  (p & kPropWord) != 0;  (p & kPropSpace) == 0

enum : uint8_t {{
{gc_enum}
}};
enum : uint8_t {{
  kPropGc = 0x1F,     // the general category (kGc*)
  kPropWord = 0x{PROP_WORD:02X},   // \\w
  kPropSpace = 0x{PROP_SPACE:02X},  // \\s
}};

extern const uint16_t kPropStage1[{len(pstage1)}];
extern const uint8_t kPropStage2[{len(pblocks) * 256}];  // {len(pblocks)} blocks

// Properties of a code point; kGcCn beyond U+10FFFF.
inline uint8_t cp_props(uint32_t cp) {{
  return cp < 0x110000 ? kPropStage2[(uint32_t)kPropStage1[cp >> 8] * 256u + (cp & 0xFFu)] : uint8_t(kGcCn);
}}

// Case-insensitive sets as cycles, sorted by code point: {{c, next member of c's set}}.
extern const uint32_t kFoldNext[{len(fold)}][2];

// The next code point that matches cp under (?i) (cp itself when none does): following it
// from cp visits cp's whole set (at most 4 code points).
inline uint32_t fold_next(uint32_t cp) {{
  uint32_t lo = 0, hi = {len(fold)};
  while (lo < hi) {{
    uint32_t mid = (lo + hi) / 2;
    if (kFoldNext[mid][0] < cp) lo = mid + 1;
    else hi = mid;
  }}
  return lo < {len(fold)} && kFoldNext[lo][0] == cp ? kFoldNext[lo][1] : cp;
}}

}}  // namespace unicode
}}  // namespace pyllama
"""
    lines = [f"// unicode_tables.cpp — GENERATED by tools/gen_unicode_tables.py; do not edit.",
             f"// Source: {source}.",
             '#include "unicode_tables.h"', "", "namespace pyllama {", "namespace unicode {", ""]
    emit(lines, "kStage1", "kStage2", stage1, blocks)
    lines += [f"// regex properties; source: {psource}.", ""]
    emit(lines, "kPropStage1", "kPropStage2", pstage1, pblocks)
    lines += [f"const uint32_t kFoldNext[{len(fold)}][2] = {{"]
    items = sorted(fold.items())
    for i in range(0, len(items), 6):
        lines.append("  " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in items[i:i + 6]))
    lines += ["};", ""]
    lines += ["}  // namespace unicode", "}  // namespace pyllama", ""]
    with open(os.path.join(root, "unicode_tables.h"), "w") as f:
        f.write(header)
    with open(os.path.join(root, "unicode_tables.cpp"), "w") as f:
        f.write("\n".join(lines))
    print(f"{len(stage1)} stage-1 entries, {len(blocks)} stage-2 blocks; {source}")
    print(f"regex properties: {len(pblocks)} stage-2 blocks; {psource}; {len(fold)} case-fold entries")


if __name__ == "__main__":
    main()
