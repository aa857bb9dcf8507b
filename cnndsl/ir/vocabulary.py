"""The words of the .cnn language, for highlighters and editors, with the layer words taken from the op registry.

The Pygments lexer (:mod:`cnndsl.tools.lexer`) and the TextMate grammar (``editors/``, written by
:mod:`cnndsl.tools.editors`) read these lists and keep none of their own, so a new op is highlighted
everywhere once it is registered.

>>> "conv" in layer_words() and "input" not in layer_words(), flag_words()[:3]
(True, ('valid', 'same', 'nobias'))
"""

from __future__ import annotations

from cnndsl.ir.ops import COMBINATORS, OPS

#: The statement keywords of the grammar (``grammar/cnn.lark``), tables' ``for ... in`` included.
KEYWORDS = ("use", "block", "network", "with", "input", "freeze", "replace", "for", "in")
#: The words of expressions: ``{a if s == 1 else b}``, ``and``, ``or``, ``not``, and the ``log`` of a log range
#: ``{1e-4..1e-1 log}``.
EXPRESSION_WORDS = ("if", "else", "and", "or", "not", "log")
#: Literal values: ``act=none``, ``bias=false``.
LITERALS = ("true", "false", "none")
#: A regex lookahead for what may follow a layer word: its shorthand (``conv3``, ``conv{k}``,
#: ``fc-10``, ``pool3/2``), its arguments, a space, or the end of a branch or a group.
LAYER_FOLLOWS = r"(?=[0-9{\-/(\s<>|\]]|$)"

__all__ = ["COMBINATORS", "EXPRESSION_WORDS", "KEYWORDS", "LAYER_FOLLOWS", "LITERALS", "activation_words", "flag_words", "layer_words"]


def layer_words() -> list[str]:
    """Every spelling of every op a .cnn text can write as a layer (names and aliases, lower case),
    longest first, so that an alternation of them tries ``maxpooling`` before ``maxpool``."""
    words = {s.lower() for op in OPS.values() if op.writable for s in (op.name, *op.aliases)}
    return sorted(words, key=lambda w: (-len(w), w))


def flag_words() -> tuple[str, ...]:
    """The bare words an argument list takes (``valid``, ``nobias``, ``ceil``), then :data:`LITERALS`."""
    flags = dict.fromkeys(word for op in OPS.values() for word in op.flags)
    return (*flags, *LITERALS)


def activation_words() -> list[str]:
    """The ops ``act=`` takes, in registry order."""
    return [name for name, op in OPS.items() if op.activation]
