"""Short programs in Python and JavaScript, some with obfuscated identifiers.

The same algorithm appears in two languages and under meaningful or meaningless names, so the
math-and-code study can see whether influential sequences share the query's tokens (names,
syntax) or its algorithm. Identifiers are written as @slot@ and filled per document.
"""

from __future__ import annotations

import random
import string

# slot -> meaningful choices
NAMES = {
    "arr": ["arr", "items", "values", "nums", "xs", "data"],
    "target": ["target", "key", "needle", "goal"],
    "lo": ["lo", "low", "left", "start"],
    "hi": ["hi", "high", "right", "end"],
    "mid": ["mid", "middle", "m"],
    "s": ["s", "text", "word", "string"],
    "n": ["n", "k", "num"],
    "a": ["a", "x", "first"],
    "b": ["b", "y", "second"],
    "res": ["result", "out", "acc", "total"],
    "p": ["pivot", "p"],
    "c": ["ch", "c", "letter"],
    "i": ["i", "j", "idx"],
}
FUNCS = {
    "binary_search": ["binary_search", "bsearch", "find_index", "search_sorted"],
    "quicksort": ["quicksort", "quick_sort", "qsort", "sort_list"],
    "reverse": ["reverse_string", "reverse", "rev", "flip_text"],
    "factorial": ["factorial", "fact", "product_up_to"],
    "fibonacci": ["fibonacci", "fib", "nth_fib"],
    "gcd": ["gcd", "greatest_common_divisor", "euclid"],
    "is_palindrome": ["is_palindrome", "palindrome", "reads_same_backwards"],
    "count_vowels": ["count_vowels", "vowel_count", "num_vowels"],
    "caesar": ["caesar", "rot", "shift_cipher", "encode_rot"],
    "max_list": ["max_value", "largest", "find_max"],
}

PY = {
    "binary_search": """def @f@(@arr@, @target@):
    @lo@, @hi@ = 0, len(@arr@) - 1
    while @lo@ <= @hi@:
        @mid@ = (@lo@ + @hi@) // 2
        if @arr@[@mid@] == @target@:
            return @mid@
        if @arr@[@mid@] < @target@:
            @lo@ = @mid@ + 1
        else:
            @hi@ = @mid@ - 1
    return -1""",
    "quicksort": """def @f@(@arr@):
    if len(@arr@) <= 1:
        return @arr@
    @p@ = @arr@[len(@arr@) // 2]
    @lo@ = [@a@ for @a@ in @arr@ if @a@ < @p@]
    @mid@ = [@a@ for @a@ in @arr@ if @a@ == @p@]
    @hi@ = [@a@ for @a@ in @arr@ if @a@ > @p@]
    return @f@(@lo@) + @mid@ + @f@(@hi@)""",
    "reverse": """def @f@(@s@):
    return @s@[::-1]""",
    "factorial": """def @f@(@n@):
    @res@ = 1
    for @i@ in range(2, @n@ + 1):
        @res@ *= @i@
    return @res@""",
    "fibonacci": """def @f@(@n@):
    @a@, @b@ = 0, 1
    for _ in range(@n@):
        @a@, @b@ = @b@, @a@ + @b@
    return @a@""",
    "gcd": """def @f@(@a@, @b@):
    while @b@:
        @a@, @b@ = @b@, @a@ % @b@
    return @a@""",
    "is_palindrome": """def @f@(@s@):
    @s@ = @s@.lower()
    return @s@ == @s@[::-1]""",
    "count_vowels": """def @f@(@s@):
    @res@ = 0
    for @c@ in @s@.lower():
        if @c@ in "aeiou":
            @res@ += 1
    return @res@""",
    "caesar": """def @f@(@s@, @n@):
    @res@ = ""
    for @c@ in @s@:
        if @c@.isalpha():
            @res@ += chr((ord(@c@.lower()) - 97 + @n@) % 26 + 97)
        else:
            @res@ += @c@
    return @res@""",
    "max_list": """def @f@(@arr@):
    @res@ = @arr@[0]
    for @a@ in @arr@:
        if @a@ > @res@:
            @res@ = @a@
    return @res@""",
}
JS = {
    "binary_search": """function @f@(@arr@, @target@) {
  let @lo@ = 0, @hi@ = @arr@.length - 1;
  while (@lo@ <= @hi@) {
    const @mid@ = Math.floor((@lo@ + @hi@) / 2);
    if (@arr@[@mid@] === @target@) return @mid@;
    if (@arr@[@mid@] < @target@) @lo@ = @mid@ + 1;
    else @hi@ = @mid@ - 1;
  }
  return -1;
}""",
    "quicksort": """function @f@(@arr@) {
  if (@arr@.length <= 1) return @arr@;
  const @p@ = @arr@[Math.floor(@arr@.length / 2)];
  const @lo@ = @arr@.filter(@a@ => @a@ < @p@);
  const @mid@ = @arr@.filter(@a@ => @a@ === @p@);
  const @hi@ = @arr@.filter(@a@ => @a@ > @p@);
  return [...@f@(@lo@), ...@mid@, ...@f@(@hi@)];
}""",
    "reverse": """function @f@(@s@) {
  return @s@.split("").reverse().join("");
}""",
    "factorial": """function @f@(@n@) {
  let @res@ = 1;
  for (let @i@ = 2; @i@ <= @n@; @i@++) @res@ *= @i@;
  return @res@;
}""",
    "fibonacci": """function @f@(@n@) {
  let @a@ = 0, @b@ = 1;
  for (let @i@ = 0; @i@ < @n@; @i@++) [@a@, @b@] = [@b@, @a@ + @b@];
  return @a@;
}""",
    "gcd": """function @f@(@a@, @b@) {
  while (@b@ !== 0) [@a@, @b@] = [@b@, @a@ % @b@];
  return @a@;
}""",
    "is_palindrome": """function @f@(@s@) {
  @s@ = @s@.toLowerCase();
  return @s@ === @s@.split("").reverse().join("");
}""",
    "count_vowels": """function @f@(@s@) {
  let @res@ = 0;
  for (const @c@ of @s@.toLowerCase()) if ("aeiou".includes(@c@)) @res@++;
  return @res@;
}""",
    "caesar": """function @f@(@s@, @n@) {
  let @res@ = "";
  for (const @c@ of @s@.toLowerCase()) {
    if (@c@ >= "a" && @c@ <= "z") @res@ += String.fromCharCode((@c@.charCodeAt(0) - 97 + @n@) % 26 + 97);
    else @res@ += @c@;
  }
  return @res@;
}""",
    "max_list": """function @f@(@arr@) {
  let @res@ = @arr@[0];
  for (const @a@ of @arr@) if (@a@ > @res@) @res@ = @a@;
  return @res@;
}""",
}
COMMENTS = {
    "binary_search": "Return the index of the target in a sorted list, or -1.",
    "quicksort": "Sort a list by partitioning around a pivot.",
    "reverse": "Reverse a string.",
    "factorial": "Multiply the numbers from 1 to n.",
    "fibonacci": "Return the n-th Fibonacci number.",
    "gcd": "Greatest common divisor by Euclid's algorithm.",
    "is_palindrome": "Check whether a word reads the same backwards.",
    "count_vowels": "Count the vowels in a string.",
    "caesar": "Shift every letter by n places (a Caesar or rot-n cipher).",
    "max_list": "Return the largest element of a list.",
}
LANGS = {"python": PY, "javascript": JS}
WORDS = ["hello", "world", "apple", "cat", "river", "secret", "code", "zebra", "moon", "garden", "signal", "paper"]


def _obfuscated_name(rng: random.Random, used: set[str]) -> str:
    while True:
        name = rng.choice(string.ascii_lowercase) + "".join(
            rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(1, 3))
        )
        if name not in used and name not in {"if", "for", "in", "do", "let", "def", "int", "len"}:
            used.add(name)
            return name


def render(algo: str, lang: str, rng: random.Random, obfuscate: bool) -> str:
    """Fill an algorithm template with meaningful or meaningless identifiers, distinct per slot."""
    src = LANGS[lang][algo]
    used: set[str] = set()
    fname = _obfuscated_name(rng, used) if obfuscate else rng.choice(FUNCS[algo])
    used.add(fname)
    src = src.replace("@f@", fname)
    for slot, choices in NAMES.items():
        tag = f"@{slot}@"
        if tag not in src:
            continue
        if obfuscate:
            name = _obfuscated_name(rng, used)
        else:
            free = [c for c in choices if c not in used] or [c + "2" for c in choices]
            name = rng.choice(free)
            used.add(name)
        src = src.replace(tag, name)
    if not obfuscate and rng.random() < 0.6:
        mark = "#" if lang == "python" else "//"
        src = f"{mark} {COMMENTS[algo]}\n{src}"
    return src


def rot(text: str, n: int) -> str:
    return "".join(chr((ord(c) - 97 + n) % 26 + 97) if "a" <= c <= "z" else c for c in text.lower())


def cipher_examples(rng: random.Random) -> dict:
    """Worked rot-n examples, the material a rot23 query could draw on."""
    lines = []
    for _ in range(rng.randint(3, 5)):
        w, n = rng.choice(WORDS), rng.choice([1, 3, 13, 23, 25])
        lines.append(f"rot{n}('{w}') = '{rot(w, n)}'")
    return {
        "text": "Caesar cipher examples:\n" + "\n".join(lines),
        "category": "code",
        "kind": "cipher_examples",
        "algorithm": "caesar",
        "prog_lang": "text",
        "obfuscated": False,
    }


def program(rng: random.Random) -> dict:
    algo, lang = rng.choice(sorted(PY)), rng.choice(sorted(LANGS))
    obf = rng.random() < 0.3
    return {
        "text": render(algo, lang, rng, obf),
        "category": "code",
        "kind": "program",
        "algorithm": algo,
        "prog_lang": lang,
        "obfuscated": obf,
    }


def generate(rng: random.Random, n: int) -> list[dict]:
    return [cipher_examples(rng) if rng.random() < 0.08 else program(rng) for _ in range(n)]
