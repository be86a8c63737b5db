"""Where the `{{ }}` templates of a `shell = true` command string sit, for `zoomrules check`.

With `shell = true` every interpolated value is `shlex.quote`d, which makes it
one literal shell word **only where the shell reads it unquoted**. Elsewhere
the quoting is undone or never applies:

- inside `"..."`: `"'$(cmd)'"` still runs `cmd` (single quotes are literal
  inside double quotes); inside `'...'` or `$'...'` the value's own quotes
  close and reopen the string;
- inside backquotes, where backslashes and quotes are re-read;
- in a here-document, where quotes are literal text and `$(...)` runs, and
  where (quoted delimiter or not) a line of the value can end the document;
- in a comment, which a newline in the value ends;
- inside `$(( ))`, whose text is evaluated as code;
- right after a backslash (`\\{{ x }}` escapes the value's opening quote) or
  a `$`;
- as a program name (`{{ x }} arg`, `/opt/hooks/{{ x }}`, after `;`, `|`,
  `&&`, `exec`, `env`, ...), an argument of `eval`, the script of `sh -c`, or
  a redirection target (`> /var/log/{{ x }}`): quoted or not, event data then
  chooses what runs or which file is written.

`misplaced(command)` scans the string the way a POSIX shell tokenises it:
quote state, backslash escapes, `$( )` (a fresh quoting context, also inside
double quotes), `${ }`, `$(( ))`, backquotes, comments, here-documents, and
command position (after control operators, reserved words, assignments and
a few wrapper programs). The text of each `{{ }}` is skipped as a whole, so
quotes inside a JMESPath literal do not count. It is a check for mistakes in
a rule, not a sandbox: what a program does with its arguments (`sh -c "$1"`,
`ssh host {{ x }}`) is beyond it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: The engine's own template syntax (engine/expr/templates.py).
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
#: Words after which the next word is still a program name.
_RESERVED = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "time"})
#: Shells: the argument after their `-c` (or `-ec`, ...) is a script.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash"})
SCRIPT_OPTION = re.compile(r"-[A-Za-z]*c[A-Za-z]*")
#: Programs whose (first non-option) argument is itself a program to run.
WRAPPERS = frozenset(
    {"exec", "command", "builtin", "env", "nohup", "nice", "sudo", "doas", "setsid", "xargs"}
)
_BLANK = " \t"
_OPERATOR = ";&|()<>\n"
#: Stands in a word's text for a quote, an expansion or a template: never part of a name.
_MARK = "\x00"

#: What each finding is called in messages, with the advice that goes with it.
PLACES = {
    "dq": (
        "is inside double quotes: with shell = true every value is already quoted, and "
        "quotes around it undo that; remove the surrounding quotes"
    ),
    "sq": (
        "is inside single quotes: with shell = true every value is already quoted, and "
        "quotes around it undo that; remove the surrounding quotes"
    ),
    "bq": "is inside backquotes, where its quoting does not hold: write $( ) instead",
    "heredoc": (
        "is inside a here-document, where quotes do not quote and a line of the value can "
        "end it: pass the value as an argument or through env"
    ),
    "comment": "is inside a comment, which a newline in the value would end: remove it",
    "arith": (
        "is inside $(( )), which evaluates its text as code: pass the value through env and "
        "check it in the program"
    ),
    "program": (
        "is where a program name goes: event data must not choose the program; write the "
        "program literally"
    ),
    "eval": "is an argument of eval, which runs it as shell code: pass it as data",
    "script": (
        "is the script of a shell's -c, which runs it as shell code: pass the value as an "
        'argument ("$1") instead'
    ),
    "escaped": (
        "follows a backslash, which escapes the opening quote of the value: remove the backslash"
    ),
    "dollar": "directly follows a $, which changes how its quotes are read: separate them",
    "redirect": (
        "names the file of a redirection: event data must not choose files (write the name "
        "literally, or use the log action)"
    ),
}


@dataclass(frozen=True)
class Finding:
    template: str  # as written in the rule, e.g. "{{ payload.object.topic }}"
    place: str  # a key of PLACES


@dataclass
class _Frame:
    """One quoting context. `top` and `cmdsub` read words and commands."""

    kind: str  # top, cmdsub, dq, sq, ansi, bq, arith, brace
    quoted: bool = False  # brace: inside double quotes
    depth: int = 0  # cmdsub, arith: open parentheses
    # Word and command state (top, cmdsub):
    expect_command: bool = True
    word: list[str] = field(default_factory=list)
    in_word: bool = False
    word_is_command: bool = False
    word_is_redirect: bool = False
    word_templates: list[str] = field(default_factory=list)
    after_wrapper: bool = False
    in_eval: bool = False
    redirect_next: bool = False
    runs_shell: bool = False  # the program is a shell: its -c argument is a script
    script_next: bool = False


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.templates = {m.start(): (m.end(), m.group(0)) for m in _TEMPLATE.finditer(text)}
        self.findings: list[Finding] = []
        self.stack: list[_Frame] = [_Frame("top")]
        self.heredocs: list[tuple[str, bool]] = []  # (delimiter, strip leading tabs)

    # -- words -------------------------------------------------------------

    def _words(self) -> _Frame:
        """The innermost frame that reads words (the one a quote or expansion belongs to)."""
        for frame in reversed(self.stack):
            if frame.kind in ("top", "cmdsub"):
                return frame
        raise AssertionError("the top frame reads words")

    def _start_word(self, frame: _Frame) -> None:
        if not frame.in_word:
            frame.in_word = True
            frame.word = []
            frame.word_templates = []
            frame.word_is_redirect = frame.redirect_next
            frame.word_is_command = frame.expect_command and not frame.redirect_next
            frame.redirect_next = False

    def _end_word(self, frame: _Frame) -> None:
        if not frame.in_word:
            return
        frame.in_word = False
        text = "".join(frame.word)
        if frame.word_is_redirect:
            self._report(frame.word_templates, "redirect")
            return
        if frame.in_eval:
            self._report(frame.word_templates, "eval")
            return
        if frame.script_next:
            frame.script_next = False
            self._report(frame.word_templates, "script")
            return
        if not frame.word_is_command:
            if frame.runs_shell and SCRIPT_OPTION.fullmatch(text):
                frame.script_next = True
            return
        if _ASSIGNMENT.match(text):
            return  # NAME=value: the program is still to come
        if frame.word_templates:
            self._report(frame.word_templates, "program")
            frame.expect_command = False
        elif text in _RESERVED:
            pass
        elif text in WRAPPERS:
            frame.after_wrapper = True  # its first non-option argument is the program
        elif frame.after_wrapper and text.startswith("-"):
            pass
        elif text == "eval":
            frame.in_eval = True
            frame.expect_command = False
        else:
            frame.expect_command = False
            frame.after_wrapper = False
            frame.runs_shell = text.rsplit("/", 1)[-1] in SHELLS

    def _command_break(self, frame: _Frame) -> None:
        self._end_word(frame)
        frame.expect_command = True
        frame.after_wrapper = False
        frame.in_eval = False
        frame.redirect_next = False
        frame.runs_shell = False
        frame.script_next = False

    def _report(self, templates: list[str], place: str) -> None:
        self.findings.extend(Finding(t, place) for t in templates)

    # -- the scan ------------------------------------------------------------

    def scan(self) -> list[Finding]:
        text, i = self.text, 0
        while i < len(text):
            if i in self.templates:
                end, template = self.templates[i]
                self._template(template)
                i = end
                continue
            frame = self.stack[-1]
            if text[i] in "\\$" and i + 1 in self.templates and frame.kind not in ("sq", "arith"):
                if frame.kind in ("top", "cmdsub") or (frame.kind == "brace" and not frame.quoted):
                    i = self._escaped_template(frame, i)
                else:
                    i += 1  # quoted: the template is reported as such
                continue
            if frame.kind in ("top", "cmdsub"):
                i = self._unquoted(frame, i)
            elif frame.kind == "dq":
                i = self._double(i)
            elif frame.kind in ("sq", "ansi"):
                if text[i] == "\\" and frame.kind == "ansi":
                    i += 2
                    continue
                if text[i] == "'":
                    self.stack.pop()
                i += 1
            elif frame.kind == "bq":
                if text[i] == "\\":
                    i += 2
                    continue
                if text[i] == "`":
                    self.stack.pop()
                i += 1
            elif frame.kind == "arith":
                i = self._arith(frame, i)
            else:  # brace: ${...}
                i = self._brace(frame, i)
        for frame in reversed(self.stack):
            if frame.kind in ("top", "cmdsub"):
                self._end_word(frame)
        return self.findings

    def _template(self, template: str) -> None:
        frame = self.stack[-1]
        if frame.kind in ("top", "cmdsub") or (frame.kind == "brace" and not frame.quoted):
            words = self._words()
            self._start_word(words)
            words.word.append(_MARK)
            words.word_templates.append(template)
            return
        place = {"dq": "dq", "brace": "dq", "sq": "sq", "ansi": "sq", "bq": "bq"}
        self.findings.append(Finding(template, place.get(frame.kind, frame.kind)))

    def _escaped_template(self, frame: _Frame, i: int) -> int:
        """A backslash or `$` right before a template: the value's quoting does not start it."""
        end, template = self.templates[i + 1]
        self.findings.append(Finding(template, "escaped" if self.text[i] == "\\" else "dollar"))
        if frame.kind in ("top", "cmdsub"):
            self._start_word(frame)
            frame.word.append(_MARK)
        return end

    def _push(self, kind: str, quoted: bool = False) -> None:
        """A quote or expansion starts (part of the current word, if words are read here)."""
        if self.stack[-1].kind in ("top", "cmdsub"):
            words = self.stack[-1]
            self._start_word(words)
            words.word.append(_MARK)
        self.stack.append(_Frame(kind, quoted=quoted))

    def _expansion(self, i: int, quoted: bool) -> int | None:
        """`$((`, `$(`, `${` or `$'` at `i`: push its frame and return the next index."""
        text = self.text
        if text.startswith("$((", i):
            self._push("arith")
            return i + 3
        if text.startswith("$(", i):
            self._push("cmdsub")
            return i + 2
        if text.startswith("${", i):
            self._push("brace", quoted=quoted)
            return i + 2
        if text.startswith("$'", i) and not quoted:
            self._push("ansi")
            return i + 2
        return None

    def _unquoted(self, frame: _Frame, i: int) -> int:
        text, ch = self.text, self.text[i]
        if ch == "\\":
            if text.startswith("\\\n", i):
                return i + 2  # line continuation
            self._start_word(frame)
            frame.word.append(text[i + 1 : i + 2])
            return i + 2
        if ch == "'":
            self._push("sq")
            return i + 1
        if ch == '"':
            self._push("dq")
            return i + 1
        if ch == "`":
            self._push("bq")
            return i + 1
        if ch == "$":
            nxt = self._expansion(i, quoted=False)
            if nxt is not None:
                return nxt
        if ch in _BLANK:
            self._end_word(frame)
            return i + 1
        if ch == "#" and not frame.in_word:
            return self._comment(i)
        if ch == "\n":
            self._command_break(frame)
            return self._heredoc_bodies(i + 1)
        if ch in ";&|":
            self._command_break(frame)
            return i + 1
        if ch == "(":
            self._command_break(frame)
            frame.depth += 1
            return i + 1
        if ch == ")":
            self._end_word(frame)
            if frame.kind == "cmdsub" and frame.depth == 0:
                self.stack.pop()
                return i + 1
            frame.depth -= 1
            frame.expect_command = False
            return i + 1
        if ch in "<>":
            return self._redirection(frame, i)
        self._start_word(frame)
        frame.word.append(ch)
        return i + 1

    def _redirection(self, frame: _Frame, i: int) -> int:
        text = self.text
        # `2>` names a file descriptor, not a word.
        if frame.in_word and "".join(frame.word).isdigit() and not frame.word_templates:
            frame.in_word = False
        else:
            self._end_word(frame)
        if text.startswith("<<<", i):
            return i + 3  # a here-string: a word, not a file
        if text.startswith("<<", i):
            return self._heredoc_operator(i + 2)
        j = i + 1
        while j < len(text) and text[j] in "<>&|":
            j += 1
        frame.redirect_next = True
        return j

    def _double(self, i: int) -> int:
        ch = self.text[i]
        if ch == "\\":
            return i + 2
        if ch == '"':
            self.stack.pop()
            return i + 1
        if ch == "`":
            self._push("bq")
            return i + 1
        if ch == "$":
            nxt = self._expansion(i, quoted=True)
            if nxt is not None:
                return nxt
        return i + 1

    def _arith(self, frame: _Frame, i: int) -> int:
        text = self.text
        if text[i] == "(":
            frame.depth += 1
        elif text[i] == ")":
            if frame.depth == 0 and text.startswith("))", i):
                self.stack.pop()
                return i + 2
            frame.depth -= 1
        return i + 1

    def _brace(self, frame: _Frame, i: int) -> int:
        ch = self.text[i]
        if ch == "\\":
            return i + 2
        if ch == "}":
            self.stack.pop()
            return i + 1
        if ch == "'" and not frame.quoted:
            self.stack.append(_Frame("sq"))
            return i + 1
        if ch == '"':
            self.stack.append(_Frame("dq"))
            return i + 1
        if ch == "`":
            self.stack.append(_Frame("bq"))
            return i + 1
        if ch == "$":
            nxt = self._expansion(i, quoted=frame.quoted)
            if nxt is not None:
                return nxt
        return i + 1

    def _comment(self, i: int) -> int:
        end = self.text.find("\n", i)
        end = len(self.text) if end < 0 else end
        self._report_templates(i, end, "comment")
        return end

    def _report_templates(self, start: int, end: int, place: str) -> int:
        """Report every template starting in [start, end); return where the last one ends."""
        last = end
        for pos in sorted(p for p in self.templates if start <= p < end):
            stop, template = self.templates[pos]
            self.findings.append(Finding(template, place))
            last = max(last, stop)
        return last

    def _heredoc_operator(self, i: int) -> int:
        """After `<<`: read the delimiter word; the body starts after the next newline."""
        text = self.text
        strip_tabs = text.startswith("-", i)
        i += 1 if strip_tabs else 0
        while i < len(text) and text[i] in _BLANK:
            i += 1
        start = i
        while i < len(text) and text[i] not in _BLANK + _OPERATOR:
            i = self.templates[i][0] if i in self.templates else i + 1
        word = text[start:i]
        self._report_templates(start, i, "heredoc")
        delimiter = word.replace("\\", "").replace("'", "").replace('"', "")
        self.heredocs.append((delimiter, strip_tabs))
        return i

    def _heredoc_bodies(self, i: int) -> int:
        """At the start of the line after a here-document operator: skip each body."""
        text = self.text
        while self.heredocs:
            delimiter, strip_tabs = self.heredocs.pop(0)
            start = i
            while i < len(text):
                end = text.find("\n", i)
                end = len(text) if end < 0 else end
                line = text[i:end]
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    self._report_templates(start, i, "heredoc")
                    i = end + 1
                    break
                i = end + 1
            else:
                self._report_templates(start, len(text), "heredoc")
        return min(i, len(text))


def misplaced(command: str) -> list[Finding]:
    """Every `{{ }}` of a `shell = true` command that its quoting cannot protect."""
    return _Scanner(command).scan()
