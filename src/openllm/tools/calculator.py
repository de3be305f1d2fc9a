"""A calculator a model can call: arithmetic on numbers, nothing else.

    calculator("12*7")        -> "84"
    calculator("7/2")         -> "3.5"
    calculator("2**100000")   -> "error: the result would have more than 100 digits"

The expression may hold only digits, the exponent's e, operators, parentheses and spaces. It is then parsed with
`ast`, and only a whitelist of nodes is evaluated: int and float literals, the binary operators + - * / // % **, unary
+ and -, and parentheses. No names, calls, attributes, subscripts, strings or comparisons, and nothing reaches `eval`.
Every size is bounded before the work is done: the length of the expression, its nesting depth, and the digits of
every number (a power is checked before it is computed), so a call takes microseconds whatever the model writes. Any
problem comes back as an "error: ..." string for the model to read; the calculator never raises.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_LENGTH = 256  # characters of the expression
MAX_DEPTH = 64  # operators nested inside each other
MAX_DIGITS = 100  # digits of any integer, literal, intermediate or result

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# Python operators a model may reach for that are not arithmetic here, with what to write instead
_HINTS = {ast.BitXor: "^ is not a power: use **", ast.MatMult: "@ is not an operator here"}
_INT_LIMIT = 10 ** MAX_DIGITS
_CHARACTERS = frozenset("0123456789._eE+-*/%() \t\r\n")
_ALLOWED = "only numbers, + - * / // % ** and parentheses"


class CalculatorError(Exception):
    """A reason the expression has no value, shown to the model."""


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers, + - * / // % ** and parentheses, e.g. 12*(3+4).
    """
    try:
        return _format(evaluate(expression))
    except CalculatorError as e:
        return f"error: {e}"
    except Exception as e:  # not expected (every size is bounded above), but a tool call must never raise
        return f"error: {type(e).__name__}"


def evaluate(expression) -> int | float:
    """The value of `expression` (a string, or an int or float taken as it is); raises `CalculatorError`."""
    if isinstance(expression, (int, float)) and not isinstance(expression, bool):
        return _number(expression)
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, got {type(expression).__name__}")
    expression = expression.strip()
    if not expression:
        raise CalculatorError("empty expression")
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"the expression is longer than {MAX_LENGTH} characters")
    # no letters (bar the exponent's e), quotes, brackets or commas: no names, strings or calls reach the parser
    unexpected = next((c for c in expression if c not in _CHARACTERS), None)
    if unexpected is not None:
        raise CalculatorError(f"unexpected character {unexpected!r}: {_ALLOWED}")
    try:
        tree = ast.parse(expression, mode="eval")  # parses only: constants are not folded, nothing runs
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError(f"not an arithmetic expression: {expression[:40]!r}") from None
    return _eval(tree.body, 0)


def _eval(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"the expression nests more than {MAX_DEPTH} operations")
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):  # bool, str, bytes, complex, None, Ellipsis
            raise CalculatorError(f"only numbers are allowed, not {node.value!r:.40}")
        return _number(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _number(_UNARY[type(node.op)](_eval(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
        return _number(value)
    op = getattr(node, "op", None)
    if type(op) in _HINTS:
        raise CalculatorError(_HINTS[type(op)])
    what = {ast.Name: "names", ast.Attribute: "attributes", ast.Call: "function calls"}.get(type(node))
    raise CalculatorError(f"{what or type(node).__name__ + ' expressions'} are not allowed: {_ALLOWED}")


def _check_power(base: int | float, exponent: int | float) -> None:
    # only an integer raised to a positive integer grows without bound in Python; float powers overflow at once
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0 or abs(base) <= 1:
        return
    if exponent * math.log10(abs(base)) > MAX_DIGITS:
        raise CalculatorError(f"the result would have more than {MAX_DIGITS} digits")


def _number(value) -> int | float:
    if isinstance(value, complex):  # a negative number to a fractional power
        raise CalculatorError("the result is not a real number")
    if isinstance(value, int):
        if abs(value) >= _INT_LIMIT:
            raise CalculatorError(f"a number has more than {MAX_DIGITS} digits")
        return value
    if math.isnan(value):
        raise CalculatorError("the result is not a number")
    if math.isinf(value):
        raise CalculatorError("the result is too large")
    return value


def _format(value: int | float) -> str:
    """Integers exactly; floats to 12 significant digits, whole ones without a fraction (7/7 -> "1", 0.1+0.2 ->
    "0.3")."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g")


__all__ = ["MAX_DEPTH", "MAX_DIGITS", "MAX_LENGTH", "CalculatorError", "calculator", "evaluate"]
