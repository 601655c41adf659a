"""Chat prompts rendered as Hugging Face transformers renders them, and the BOS token a
plain prompt begins with.

A model's chat template is Jinja2 written for transformers' ``apply_chat_template``: a
sandboxed environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols``
extension, a ``tojson`` filter that keeps non-ASCII text as it is, ``raise_exception``,
``strftime_now``, and the tokenizer's special tokens (``bos_token``, ``eos_token``, ...)
as variables. Rendered any other way, the same template writes a different prompt
(whitespace, ``in`` on strings, tool schemas), so it is rendered here the same way.

:class:`PromptFormat` is read once per model at load: the template (compiled once),
what it cannot show the model (learnt by rendering a probe conversation), and the BOS
id a ``/v1/completions`` text prompt begins with. The rendered text is encoded as
transformers encodes it (``add_special_tokens=False``: special-token text becomes its
token, and no BOS is added; a template that wants one writes ``{{ bos_token }}``).
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmserver.errors import APIError, ChatTemplateError, ChatTemplateMissing, ChatTemplateUnsupported

log = logging.getLogger("llmserver.chat_template")

# The special tokens transformers hands every template (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# Variables the renderer sets itself, and the environment's own functions: a request's
# chat_template_kwargs may not replace them.
RESERVED_VARIABLES = frozenset({
    "messages", "tools", "documents", "add_generation_prompt", "continue_final_message", "chat_template",
    *SPECIAL_TOKEN_NAMES, "raise_exception", "strftime_now", "namespace", "dict",
})

# Tool-call ids the server writes: 9 letters and digits, the only form Mistral's
# templates accept (they raise on any other), and a valid id for every other template.
TOOL_CALL_ID_ALPHABET = string.ascii_letters + string.digits
TOOL_CALL_ID_LENGTH = 9


def new_tool_call_id() -> str:
    return "".join(secrets.choice(TOOL_CALL_ID_ALPHABET) for _ in range(TOOL_CALL_ID_LENGTH))


class ChatTemplateLoadError(Exception):
    """A model's chat template cannot be read or compiled (the model does not load)."""


# --- the environment ----------------------------------------------------------------------


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``, which transformers' templates use to
    mark the assistant's tokens for training masks: rendered as its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters and sorts keys; templates expect
    # json.dumps, with non-ASCII text kept.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` in a template, without the type itself (whose attributes reach
    further than a template should)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore names, which could reach the
    interpreter's internals."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"A chat template cannot set the namespace attribute {name!r}.")


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["dict"] = _TemplateDict()
    environment.globals["namespace"] = _TemplateNamespace
    return environment


def compile_template(source: str) -> jinja2.Template:
    """A chat template compiled as transformers compiles it (jinja2.TemplateSyntaxError
    if it is not Jinja)."""
    return _environment().from_string(source)


# --- what the template receives ------------------------------------------------------------


def template_messages(messages: list[dict]) -> list[dict]:
    """Validated messages as a chat template receives them: an assistant's tool calls
    with their arguments as objects (as templates write them back with tojson), and a
    tool-call message's missing content as "" (as vLLM passes it: templates such as
    DeepSeek-R1's concatenate the content of every assistant message)."""
    rendered = []
    for message in messages:
        out = {"role": message["role"], "content": message["content"] if message.get("content") is not None else ""}
        for key in ("name", "tool_call_id"):
            if key in message:
                out[key] = message[key]
        # An assistant's reasoning, under each name templates read it by (Qwen3 and
        # DeepSeek "reasoning_content", gpt-oss "thinking"), as transformers passes it.
        reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            out["thinking"] = out["reasoning_content"] = reasoning
        if "tool_calls" in message:
            out["tool_calls"] = [{
                "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": _as_object(call["function"]["arguments"])},
            } for call in message["tool_calls"]]
        rendered.append(out)
    return rendered


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _as_object(arguments: str):
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _plain(value):
    """JSON data as plain dicts and lists (validated request data holds OrderedDicts and
    DRF's own list types, whose extra methods a template has no business calling)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# --- the template ---------------------------------------------------------------------------

# What a probe conversation shows a template can drop, with the request parameter that
# asks for it and how a refusal says it.
_LIMITS = {
    "tools": ("tools", "does not show the offered tools to the model"),
    "system": ("messages", "drops system messages"),
    "tool_calls": ("messages", "drops the tool calls of assistant messages"),
    "tool_results": ("messages", "drops tool results (messages with role 'tool')"),
}


@dataclass
class ChatTemplate:
    """A model's chat template(s), compiled: ``default``, and ``tool_use`` for requests
    with tools when the model has one (as transformers picks them)."""

    sources: dict[str, str]  # template name -> Jinja source
    special_tokens: dict[str, str]  # bos_token, eos_token, ... as the template sees them
    origin: str  # where the template came from, for messages
    compiled: dict[str, jinja2.Template] = field(default_factory=dict)
    # What the template drops, learnt by :meth:`probe`: "tools", "system", "tool_calls",
    # "tool_results".
    drops: frozenset[str] = frozenset()

    def __post_init__(self):
        for name, source in self.sources.items():
            try:
                self.compiled[name] = compile_template(source)
            except jinja2.TemplateSyntaxError as exc:
                where = f" (template '{name}')" if len(self.sources) > 1 else ""
                raise ChatTemplateLoadError(
                    f"the chat template in {self.origin}{where} is not valid Jinja: {exc.message} "
                    f"(line {exc.lineno})") from None

    def pick(self, tools: list | None) -> jinja2.Template | None:
        if tools and "tool_use" in self.compiled:
            return self.compiled["tool_use"]
        return self.compiled.get("default")

    def render(self, messages: list[dict], *, tools: list[dict] | None = None, add_generation_prompt: bool = True,
               template_kwargs: dict | None = None) -> str:
        """The prompt text. Whatever the template raises comes out as it is (see
        :meth:`PromptFormat.chat_prompt` for the API's errors)."""
        template = self.pick(tools)
        if template is None:
            raise LookupError("no default chat template")
        context = {
            **_plain(template_kwargs or {}),
            **self.special_tokens,
            "messages": _plain(messages),
            "tools": _plain(tools) if tools else None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        return template.render(context)

    def probe(self) -> dict[str, str]:
        """Render a small conversation in pieces (system, tools, an assistant's tool call,
        a tool result) and set :attr:`drops` to what the rendered text lost. Returns a
        note for each piece the template dropped or refused, for the load log. A piece
        the template refuses is not counted as dropped: a request using it gets the
        template's own error."""
        notes, drops = {}, set()
        user = {"role": "user", "content": _PROBE_USER}

        def attempt(messages, tools=None):
            try:
                return self.render(messages, tools=tools), None
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                return None, f"{type(exc).__name__}: {exc}"

        base, error = attempt([user])
        if error or _PROBE_USER not in base:
            notes["user"] = f"fails on a one-message conversation ({error or 'the message is not in the prompt'})"
        checks = {
            "system": ([{"role": "system", "content": _PROBE_SYSTEM}, user], None, _PROBE_SYSTEM),
            "tools": ([user], [_PROBE_TOOL], _PROBE_TOOL["function"]["name"]),
            "tool_calls": ([user, _PROBE_CALL], [_PROBE_TOOL], _PROBE_ARGUMENT),
            "tool_results": ([user, _PROBE_CALL, _PROBE_RESULT], [_PROBE_TOOL], _PROBE_RESULT_TEXT),
        }
        for name, (messages, tools, marker) in checks.items():
            text, error = attempt(messages, tools)
            if error and tools:  # a template that refuses tools may still render calls without them
                text, error = attempt(messages)
            if error:
                notes[name] = f"raises {error}"
            elif marker not in text:
                drops.add(name)
                notes[name] = _LIMITS[name][1]
        self.drops = frozenset(drops)
        return notes

    def refusal(self, model_id: str, messages: list[dict], tools: list | None) -> APIError | None:
        """A 400 for a request that uses what this template drops, naming the parameter."""
        used = set()
        if tools:
            used.add("tools")
        for message in messages:
            if message["role"] == "system":
                used.add("system")
            if message.get("tool_calls"):
                used.add("tool_calls")
            if message["role"] == "tool":
                used.add("tool_results")
        for name in ("tools", "system", "tool_calls", "tool_results"):
            if name in used and name in self.drops:
                param, what = _LIMITS[name]
                return ChatTemplateUnsupported(
                    f"The chat template of model '{model_id}' {what}, so this request cannot be shown to the model "
                    f"as sent. Leave it out, or serve the model with a chat_template that renders it.",
                    param=param)
        return None


_PROBE_USER = "probe-user-7d1e"
_PROBE_SYSTEM = "probe-system-4a2c"
_PROBE_ARGUMENT = "probe-argument-9b3f"
_PROBE_RESULT_TEXT = "probe-result-2e8a"
_PROBE_TOOL = {"type": "function", "function": {
    "name": "probe_lookup_5c", "description": "Looks a word up.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}
_PROBE_CALL = {"role": "assistant", "content": "", "tool_calls": [{
    "id": "pr0be7c4d", "type": "function", "function": {"name": "probe_lookup_5c", "arguments": {"word": _PROBE_ARGUMENT}}}]}
_PROBE_RESULT = {"role": "tool", "tool_call_id": "pr0be7c4d", "content": _PROBE_RESULT_TEXT}


# --- reading a model folder ----------------------------------------------------------------


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken
    object ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ChatTemplateLoadError(f"{path} is not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def special_tokens(folder: Path, tokenizer_config: dict) -> dict[str, str]:
    """The special tokens a template sees, as transformers' ``special_tokens_map``:
    the standard ones and the model's own ``*_token`` entries (gemma's ``boi_token``),
    from tokenizer_config.json, else special_tokens_map.json."""
    tokens = {}
    for source in (_read_json(folder / "special_tokens_map.json"), tokenizer_config):
        extra = source.get("extra_special_tokens")
        entries = {**(extra if isinstance(extra, dict) else {}), **source}
        for name, value in entries.items():
            if name.endswith("_token") and (text := _token_text(value)) is not None:
                tokens[name] = text
    return tokens


def _template_sources(folder: Path, tokenizer_config: dict, override: str | None) -> tuple[dict[str, str], str]:
    """The model's templates by name, and where they came from: the override file; else
    chat_template.jinja (and additional_chat_templates/*.jinja), which take priority
    over tokenizer_config.json's chat_template (a string, or a list of {name, template})
    as in transformers."""
    if override:
        path = Path(override).expanduser()
        path = path if path.is_absolute() else folder / path
        try:
            return {"default": path.read_text(encoding="utf-8")}, str(path)
        except OSError as exc:
            raise ChatTemplateLoadError(f"cannot read the chat_template {path}: {exc.strerror}") from None
    sources = {}
    if (folder / "chat_template.jinja").is_file():
        sources["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            sources[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if sources:
        return sources, str(folder / "chat_template.jinja")
    configured = tokenizer_config.get("chat_template")
    origin = str(folder / "tokenizer_config.json")
    if isinstance(configured, str):
        return {"default": configured}, origin
    if isinstance(configured, list):
        return {entry["name"]: entry["template"] for entry in configured
                if isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("template"), str)}, origin
    return {}, origin


def template_text(folder: str | Path, override: str | None = None) -> str:
    """Every template the model has (or the override's), as one text: what the tool-call
    and reasoning parsers are detected from. "" when it has none; ChatTemplateLoadError
    when the override cannot be read."""
    folder = Path(folder)
    sources, _ = _template_sources(folder, _read_json(folder / "tokenizer_config.json"), override)
    return "\n".join(sources.values())


def prompt_bos_id(tokenizer: tokenizers.Tokenizer, tokenizer_config: dict) -> int | None:
    """The id a text prompt begins with, as the tokenizer adds it to ``tokenizer(text)``:
    the special token tokenizer.json's post_processor puts before a text (llama3's and
    gemma's TemplateProcessing), else the BOS when tokenizer_config.json has
    ``add_bos_token`` true (as transformers 4's Llama tokenizers build that processor
    from the flag). None when nothing is added."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    special = tokenizer.encode("a", add_special_tokens=True).ids
    if len(special) > len(plain) and special[1:1 + len(plain)] == plain:
        return special[0]
    if tokenizer_config.get("add_bos_token") is True:
        bos = _token_text(tokenizer_config.get("bos_token"))
        if bos is not None:
            return tokenizer.token_to_id(bos)
    return None


@dataclass
class PromptFormat:
    """How one model's requests become prompt ids: its chat template (None: it has
    none), its tokenizer as Hugging Face's ``tokenizers`` runs it, and the BOS id its
    text prompts begin with (None: none).

    Prompts are encoded here rather than by onnxruntime-genai's tokenizer, whose BPE
    merges differ from Hugging Face's on SentencePiece vocabularies (llama2's and
    gemma's: "}}}," and "|>" come out as other tokens than the model was trained on).
    Generated tokens are still decoded by the engine's tokenizer."""

    model_id: str
    chat_template: ChatTemplate | None
    tokenizer: tokenizers.Tokenizer
    bos_id: int | None

    @classmethod
    def load(cls, model_id: str, folder: str | Path, override: str | None = None) -> PromptFormat:
        """Read the model folder (ChatTemplateLoadError if a template is unreadable or
        not Jinja); probe the template and log once what it drops."""
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        sources, origin = _template_sources(folder, config, override)
        template = ChatTemplate(sources, special_tokens(folder, config), origin) if sources else None
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - the library raises its own Exception
            raise ChatTemplateLoadError(f"cannot read {folder / 'tokenizer.json'}: {exc}") from None
        prompt_format = cls(model_id, template, tokenizer, prompt_bos_id(tokenizer, config))
        if template is None:
            log.warning("model %s has no chat template: chat requests are refused; /v1/completions works "
                        "(set chat_template to serve chats)", model_id)
        else:
            notes = template.probe()
            if notes:
                log.warning("model %s: its chat template (%s) %s; requests that need what it drops are refused",
                            model_id, origin, "; ".join(f"{name}: {note}" for name, note in notes.items()))
        return prompt_format

    def chat_prompt(self, messages: list[dict], *, tools: list[dict] | None = None, add_generation_prompt: bool = True,
                    template_kwargs: dict | None = None) -> str:
        """The prompt text of validated chat messages (and the tools offered), or a 400
        saying why the model's template cannot render them."""
        template = self.chat_template
        if template is None or template.pick(tools) is None:
            raise ChatTemplateMissing(
                f"The model '{self.model_id}' has no chat template, so it cannot take chat messages. Send a "
                f"prompt to /v1/completions, or serve the model with a chat_template.",
                param="messages")
        refusal = template.refusal(self.model_id, messages, tools)
        if refusal is not None:
            raise refusal
        try:
            return template.render(template_messages(messages), tools=tools, add_generation_prompt=add_generation_prompt,
                                   template_kwargs=template_kwargs)
        except jinja2.TemplateError as exc:
            # raise_exception's message, or Jinja's own (an undefined value, a sandbox refusal).
            message = exc.message or type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - the template failed on these messages, not the server
            message = f"{type(exc).__name__}: {exc}"
        raise ChatTemplateError(f"The chat template of model '{self.model_id}' cannot render these messages: {message}",
                                param="messages")

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        """The ids of ``text``, special-token text as its token (a rendered chat prompt
        holds them); with ``bos``, the model's BOS first when its tokenizer adds one to
        a text (``tokenizer(text).input_ids``, what /v1/completions generates from)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos and self.bos_id is not None else ids
