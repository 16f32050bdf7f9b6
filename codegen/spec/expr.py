"""A tiny arithmetic language for size expressions in specs (``4 * hidden_size``).

Specs never contain Python: an expression is tokenised and parsed here, and the generator renders
the parsed tree back to Python source itself, so nothing from the spec is ever evaluated or pasted.
"""

from __future__ import annotations

import dataclasses
import re

from codegen.errors import CodegenError

_TOKEN = re.compile(r"\s*(?:(?P<number>\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<op>//|[-+*/()]))")
_MAX_LENGTH = 200
# Functions an expression may call -> the Python the generated module runs (it imports math).
_FUNCTIONS = {"sqrt": "math.sqrt"}


class ExpressionError(CodegenError):
    """The expression is not valid arithmetic; the message says where."""


@dataclasses.dataclass(frozen=True)
class Expression:
    """A parsed expression: its canonical Python source and the names it reads."""

    source: str
    names: frozenset[str]


def parse(text: str) -> Expression:
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"expression longer than {_MAX_LENGTH} characters")
    tokens = _tokenize(text)
    parser = _Parser(tokens)
    source = parser.expression()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} in {text!r}")
    return Expression(source=source, names=frozenset(parser.names))


def _tokenize(text: str) -> list[str]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ExpressionError(f"unexpected character {text[position:].lstrip()[:1]!r} in {text!r}")
        tokens.append(match.group(match.lastgroup))
        position = match.end()
    if not tokens:
        raise ExpressionError("empty expression")
    return tokens


class _Parser:
    """Recursive descent: expression := term (('+'|'-') term)*, term := factor (('*'|'/'|'//') factor)*,
    factor := number | name | sqrt '(' expression ')' | '(' expression ')' | '-' factor."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.position = 0
        self.names: set[str] = set()

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("expression ends too early")
        self.position += 1
        return token

    def expression(self) -> str:
        source = self.term()
        while self.peek() in ("+", "-"):
            source = f"{source} {self.take()} {self.term()}"
        return source

    def term(self) -> str:
        source = self.factor()
        while self.peek() in ("*", "/", "//"):
            source = f"{source} {self.take()} {self.factor()}"
        return source

    def factor(self) -> str:
        token = self.take()
        if token == "(":
            inner = self.expression()
            if self.take() != ")":
                raise ExpressionError("missing ')'")
            return f"({inner})"
        if token == "-":
            return f"-{self.factor()}"
        if token[0].isdigit():
            return token
        if (token[0].isalpha() or token[0] == "_") and self.peek() == "(":
            if token not in _FUNCTIONS:
                raise ExpressionError(f"unknown function {token!r}; functions: {', '.join(_FUNCTIONS)}")
            return f"{_FUNCTIONS[token]}{self.factor()}"
        if token[0].isalpha() or token[0] == "_":
            self.names.add(token)
            return token
        raise ExpressionError(f"unexpected {token!r}")
