"""``/v1/responses``: a chat completion's turns shaped as a Response and, streamed, as
its typed events."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator


from inference.engine import EngineUnavailable, EngineWorker
from inference.generation import Generation, GenerationFailed, generation_error, sampling_settings
from inference.serving import ChatServing
from inference.tool_parsers import parse_tool_calls
from inference.tools import ToolCall


class ResponsesServing(ChatServing):
    """``/v1/responses``: the same turns as a chat completion, shaped as a Response
    (output items: a message with output_text, and function calls) and, streamed, as
    its typed events (response.created, response.output_text.delta, ...,
    response.completed)."""

    def __init__(self, worker: EngineWorker, model_name: str):
        super().__init__(worker, model_name)
        self.request: dict = {}

    def generation(self, data: dict) -> Generation:
        self.request = data["responses"]
        generation = super().generation(data)
        if generation.guidance_param == "response_format":
            generation.guidance_param = "text.format"  # as this request names it
        return generation

    def new_id(self) -> str:
        return f"resp_{uuid.uuid4().hex}"

    def response(self, response_id: str, created: int, status: str, output: list, generation: Generation | None,
                 finish_reason: str | None = None) -> dict:
        request = self.request
        usage = None
        if generation is not None and status != "in_progress":
            counts = generation.usage()
            usage = {
                "input_tokens": counts["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": counts["prompt_tokens_details"]["cached_tokens"]},
                "output_tokens": counts["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": generation.reasoning_tokens},
                "total_tokens": counts["total_tokens"],
            }
        choice = request.get("tool_choice", "auto" if self.tools else "none")
        temperature, top_p, _ = sampling_settings(request, self.worker)  # the model's defaults filled in
        return {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if finish_reason == "length" else None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "model": self.model_name,
            "output": output,
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,  # stateless: nothing is kept, whatever the request said
            "temperature": temperature,
            "text": {"format": request.get("text", {}).get("format") or {"type": "text"}},
            "tool_choice": {"type": "function", **choice} if isinstance(choice, dict) else choice,
            "tools": request.get("tools", []),
            "top_p": 1.0 if top_p is None else top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": request.get("user"),
            "metadata": request.get("metadata", {}),
        }

    async def create(self, generation: Generation) -> dict:
        parts, thoughts, reason = [], [], None
        try:
            async for update in generation.updates():
                if update.reasoning:
                    thoughts.append(update.reasoning)
                if update.text:
                    parts.append(update.text)
                if update.finish_reason:
                    reason = update.finish_reason
        except GenerationFailed as failed:
            raise failed.api_error from None
        text = "".join(parts)
        parser = self.tool_parser()
        content, calls = parse_tool_calls(text, parser) if parser is not None else (text, [])
        output = [_reasoning_item(f"rs_{uuid.uuid4().hex}", "".join(thoughts), "completed")] if thoughts else []
        if content or not calls:
            output.append(_message_item(f"msg_{uuid.uuid4().hex}", content or "", "completed"))
        output += [_function_call_item(call, "completed") for call in calls]
        generation.finish_reasons[0] = "tool_calls" if calls and reason == "stop" else reason
        status = "incomplete" if reason == "length" else "completed"
        return self.response(self.new_id(), int(time.time()), status, output, generation, reason)

    async def stream(self, generation: Generation, *, include_usage: bool = False) -> AsyncIterator[dict]:
        response_id, created = self.new_id(), int(time.time())
        events = _EventCounter()
        yield events.next("response.created", response=self.response(response_id, created, "in_progress", [], None))
        yield events.next("response.in_progress", response=self.response(response_id, created, "in_progress", [], None))
        output: list[dict] = []
        message = None  # the output message item while its text streams
        parser = self.tool_parser()
        text, reason = [], None
        reasoning_item, thoughts = None, []  # the reasoning output item while its text streams

        def opened(item: dict, part: dict) -> list[dict]:
            """An output item (reasoning or message) and its one content part begin."""
            output.append(item)
            index = len(output) - 1
            return [events.next("response.output_item.added", output_index=index, item={**item, "content": []}),
                    events.next("response.content_part.added", item_id=item["id"], output_index=index,
                                content_index=0, part=part)]

        def closed(item: dict, done_text: str, done_event: str) -> list[dict]:
            """The item's text is complete: its done events, last the item's."""
            index = output.index(item)
            item["content"][0]["text"] = done_text
            item["status"] = "completed"
            return [
                events.next(done_event, item_id=item["id"], output_index=index, content_index=0, text=done_text),
                events.next("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=item["content"][0]),
                events.next("response.output_item.done", output_index=index, item=item),
            ]

        def open_reasoning():
            nonlocal reasoning_item
            reasoning_item = _reasoning_item(f"rs_{uuid.uuid4().hex}", "", "in_progress")
            return opened(reasoning_item, {"type": "reasoning_text", "text": ""})

        def close_reasoning():
            nonlocal reasoning_item
            closing, reasoning_item = closed(reasoning_item, "".join(thoughts), "response.reasoning_text.done"), None
            return closing

        def open_message():
            nonlocal message
            message = _message_item(f"msg_{uuid.uuid4().hex}", "", "in_progress")
            return opened(message, {"type": "output_text", "text": "", "annotations": []})

        def close_message():
            nonlocal message
            closing, message = closed(message, "".join(text), "response.output_text.done"), None
            return closing

        try:
            async for update in generation.updates():
                if update.reasoning:
                    if reasoning_item is None:
                        for event in open_reasoning():
                            yield event
                    thoughts.append(update.reasoning)
                    yield events.next("response.reasoning_text.delta", item_id=reasoning_item["id"],
                                      output_index=output.index(reasoning_item), content_index=0, delta=update.reasoning)
                if reasoning_item is not None and (update.text or update.finish_reason):
                    for event in close_reasoning():
                        yield event
                content, calls = (parser.feed(update.text) if parser else (update.text, [])) if update.text else ("", [])
                if update.finish_reason:
                    reason = update.finish_reason
                    if parser:
                        content += parser.finish()
                if content:
                    if message is None:
                        for event in open_message():
                            yield event
                    text.append(content)
                    yield events.next("response.output_text.delta", item_id=message["id"], output_index=output.index(message),
                                      content_index=0, delta=content)
                for call in calls:
                    if message is not None:
                        for event in close_message():
                            yield event
                    item = _function_call_item(call, "in_progress")
                    output.append(item)
                    index = len(output) - 1
                    yield events.next("response.output_item.added", output_index=index, item={**item, "arguments": ""})
                    yield events.next("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                      delta=call.arguments)
                    yield events.next("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                      arguments=call.arguments)
                    item["status"] = "completed"
                    yield events.next("response.output_item.done", output_index=index, item=item)
        except (GenerationFailed, EngineUnavailable) as exc:
            error = generation_error(exc)
            yield events.next("error", **error.responses_event())
            failed = self.response(response_id, created, "failed", output, generation, reason)
            failed["error"] = error.responses_error()
            yield events.next("response.failed", response=failed)
            return
        if message is None and all(item["type"] == "reasoning" for item in output):
            # An empty answer is still a message.
            for event in open_message():
                yield event
        if message is not None:
            for event in close_message():
                yield event
        has_calls = any(item["type"] == "function_call" for item in output)
        generation.finish_reasons[0] = "tool_calls" if has_calls and reason == "stop" else reason
        status = "incomplete" if reason == "length" else "completed"
        yield events.next("response.incomplete" if status == "incomplete" else "response.completed",
                          response=self.response(response_id, created, status, output, generation, reason))


class _EventCounter:
    """Responses stream events, numbered in order (``sequence_number``)."""

    def __init__(self):
        self.sequence = 0

    def next(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event


def _message_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reasoning_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": text}],
            "status": status}


def _function_call_item(call: ToolCall, status: str) -> dict:
    return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": call.id, "name": call.name,
            "arguments": call.arguments, "status": status}
