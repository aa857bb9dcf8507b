"""A Pygments lexer for .cnn files (``pygmentize -l cnn net.cnn``), registered as an entry point.

Its words come from :mod:`cnndsl.ir.vocabulary` (the layer names and argument flags from the op
registry), so a new op is highlighted as soon as it is registered; combinators, keywords,
labels, references, repetition, shapes, numbers and ``{expressions}`` each get their own token.

>>> from pygments.token import Error
>>> [t for t, _ in CnnLexer().get_tokens("network t: input 3x32x32  conv3-8 relu") if t is Error]
[]
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text, Whitespace

from cnndsl.ir.vocabulary import COMBINATORS, EXPRESSION_WORDS, KEYWORDS, LAYER_FOLLOWS, flag_words, layer_words

_WORD = r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+|\{[^{}\n]*\})"
#: A dotted name: parts of words, numbers and {expression} templates joined by hyphens (`trunk.block{i}-{j}`).
_PATH = rf"[A-Za-z_][A-Za-z0-9_]*(?:\{{[^{{}}\n]*\}})?(?:-{_WORD})*(?:\.{_WORD}(?:-{_WORD})*)*"


class CnnLexer(RegexLexer):
    """The .cnn network description language of cnndsl."""

    name = "cnn"
    aliases = ["cnn", "cnndsl"]  # noqa: RUF012 - Pygments' own class attributes
    filenames = ["*.cnn"]  # noqa: RUF012
    mimetypes = ["text/x-cnndsl"]  # noqa: RUF012
    flags = 0

    tokens = {  # noqa: RUF012
        "root": [
            (r"[ \t\f\r\n]+", Whitespace),
            (r"#[^\n]*", Comment.Single),
            (r'"[^"\n]*"', String.Double),
            (r"\bin(?=\.[A-Za-z_])", Name.Builtin.Pseudo),  # in.c, the input's shape
            # a label: `layer1:`, `features.0:`, `block1-0:`, `block{i}-{j}:` (not `p=same`, not `k:=`)
            (rf"({_PATH})(\s*)(:)(?!=)", bygroups(Name.Label, Whitespace, Punctuation)),
            (words(KEYWORDS, suffix=r"\b"), Keyword),
            (rf"@{_PATH}", Name.Variable.Magic),
            (words(COMBINATORS, suffix=r"(?=\s*[(<])"), Keyword.Reserved),
            # a layer in the papers' short form: conv3-64/2, conv1x7-192, maxpool3/2, fc-4096, soft-max
            (r"(?i)(" + "|".join(layer_words()) + ")" + LAYER_FOLLOWS, Name.Builtin),
            (r"(?<![A-Za-z0-9_])x(?=[0-9{])", Operator.Word),  # repetition: x3, x{n}
            (r"[0-9]+(?:x[0-9]+)+", Number.Integer),  # shapes and rectangular kernels
            (r"[0-9]+\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+", Number.Float),
            (r"[0-9]+", Number.Integer),
            (words(flag_words(), suffix=r"\b"), Keyword.Constant),
            (words(EXPRESSION_WORDS, prefix=r"\b", suffix=r"\b"), Operator.Word),  # {a if s == 1 else b}
            (r"[A-Za-z_][A-Za-z0-9_]*", Name),
            (r"//|\.\.|[=!<>]=|[-+*/%=]", Operator),
            (r"[<>|]", Operator),
            (r"[()\[\]{},.:]", Punctuation),
        ],
    }


__all__ = ["CnnLexer", "Text"]
