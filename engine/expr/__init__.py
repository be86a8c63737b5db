"""Expressions: JMESPath conditions and `{{ }}` templates, compiled once.

The parts, from the front door inwards:

- `compiler`: `ExpressionCompiler`, text -> `search(document)`, with either
  evaluator ("compiled" or jmespath's "interpreter");
- `codegen`: JMESPath trees -> generated Python functions;
- `plans`: one generated function per event name, matching all its rules;
- `shapes`: expressions differing only in literals share one parse and code;
- `guards`: the leading equality tests the interpreted matcher shares;
- `functions`: the engine's JMESPath functions beyond the standard set;
- `templates`: `{{ expr }}` in action parameters.

What other packages use is re-exported here.
"""

from engine.errors import ExpressionError, TemplateError
from engine.expr.compiler import EVALUATORS, Evaluator, ExpressionCompiler, Guard, Search, is_truthy
from engine.expr.templates import Constant, Renderer, Template, compile_value, has_template, to_text

__all__ = [
    "EVALUATORS",
    "Constant",
    "Evaluator",
    "ExpressionCompiler",
    "ExpressionError",
    "Guard",
    "Renderer",
    "Search",
    "Template",
    "TemplateError",
    "compile_value",
    "has_template",
    "is_truthy",
    "to_text",
]
