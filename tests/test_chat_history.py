"""The chat page's conversations on the server (chat.history, chat.models): a user's own
only, saved with a version so that a stale copy never overwrites a newer one, deleted
with undo, searched, exported, gone with their user, and told to the user's other tabs
over the chat socket. Through Django's test client (the page's own requests, CSRF
checked) and, for the socket, Channels' communicator on the ASGI application."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from chat.models import Conversation
from llmserver import clock
from tests.conftest import make_user

URL = "/chat/conversations/"

MESSAGES = [
    {"id": "m1", "role": "user", "content": "What is 3 plus 4?", "state": "done"},
    {"id": "m2", "role": "assistant", "content": "3 plus 4 is 7.", "state": "done", "finishReason": "stop",
     "model": "llmserver-demo", "durationMs": 12.5, "requestId": "req-1",
     "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}, "injected": "<script>"},
]


def conversation(**fields) -> dict:
    return {"title": "Sums", "model": "llmserver-demo", "system": "Be brief.", "settings": {"temperature": 0.2},
            "createdAt": 1764806400000, "messages": MESSAGES, "version": 0, **fields}


@pytest.fixture
def user(live_db):
    return make_user("history")


@pytest.fixture
def page(user) -> Client:
    """The user's browser: logged in, CSRF checked as for the page's own requests."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/")  # the page: sets the CSRF cookie its requests send back
    return client


def put(client: Client, public_id: str, body: dict):
    return client.put(f"{URL}{public_id}/", json.dumps(body), content_type="application/json",
                      headers={"X-CSRFToken": client.cookies["csrftoken"].value})


def send(client: Client, method: str, path: str):
    return getattr(client, method)(path, headers={"X-CSRFToken": client.cookies["csrftoken"].value})


def test_a_conversation_is_kept_as_the_page_sent_it_and_read_back_whole(page, user):
    saved = put(page, "c-1", conversation())
    assert saved.status_code == 200
    assert (saved.json()["id"], saved.json()["version"], saved.json()["title"]) == ("c-1", 1, "Sums")
    read = page.get(f"{URL}c-1/").json()
    assert read["messages"] == [MESSAGES[0], {k: v for k, v in MESSAGES[1].items() if k != "injected"}]
    assert (read["system"], read["settings"], read["createdAt"], read["version"]) == (
        "Be brief.", {"temperature": 0.2}, 1764806400000, 1)
    stored = Conversation.objects.get(user=user, public_id="c-1")
    assert stored.request_ids == ["req-1"]
    assert page.get(URL).json() == {"conversations": [
        {"id": "c-1", "title": "Sums", "model": "llmserver-demo", "version": 1, "createdAt": 1764806400000,
         "updatedAt": read["updatedAt"]}]}


def test_a_stale_copy_is_refused_and_the_newer_one_stands(page, user):
    put(page, "c-1", conversation())
    assert put(page, "c-1", conversation(title="From tab A", version=1)).json()["version"] == 2
    stale = put(page, "c-1", conversation(title="From tab B", version=1))
    assert (stale.status_code, stale.json()) == (409, {"error": {
        "message": "The conversation 'c-1' was changed elsewhere (now version 2, yours 1).",
        "type": "invalid_request_error", "param": "version", "code": "conversation_changed"}})
    assert page.get(f"{URL}c-1/").json()["title"] == "From tab A"
    new_over_old = put(page, "c-1", conversation(title="New", version=0))  # "new" over an existing one
    assert new_over_old.status_code == 409


def test_nobody_reads_changes_or_deletes_another_users_conversation(page, user):
    put(page, "c-1", conversation())
    other = Client(enforce_csrf_checks=True)
    other.force_login(make_user("other"))
    other.get("/")
    not_found = {"error": {"message": "No conversation 'c-1' of yours.", "type": "invalid_request_error",
                           "param": None, "code": "not_found"}}
    assert (other.get(f"{URL}c-1/").status_code, other.get(f"{URL}c-1/").json()) == (404, not_found)
    assert send(other, "delete", f"{URL}c-1/").status_code == 404
    assert other.get(URL).json() == {"conversations": []}
    assert put(other, "c-1", conversation(title="Theirs")).status_code == 200  # their own, beside it
    assert page.get(f"{URL}c-1/").json()["title"] == "Sums"


def test_a_deleted_conversation_can_be_restored_until_it_is_purged(page, user):
    put(page, "c-1", conversation())
    put(page, "c-2", conversation(title="Other"))
    assert send(page, "delete", f"{URL}c-1/").json() == {"id": "c-1", "deleted": True}
    assert [c["id"] for c in page.get(URL).json()["conversations"]] == ["c-2"]
    assert page.get(f"{URL}c-1/").status_code == 404
    restored = send(page, "post", f"{URL}c-1/restore/")
    assert (restored.status_code, restored.json()["title"]) == (200, "Sums")
    assert sorted(c["id"] for c in page.get(URL).json()["conversations"]) == ["c-1", "c-2"]

    send(page, "delete", f"{URL}c-1/")
    with clock.frozen(clock.now() + timedelta(days=30, minutes=1)):
        page.get(URL)  # the list purges what was deleted over 30 days ago
    assert not Conversation.objects.filter(user=user, public_id="c-1").exists()
    assert send(page, "post", f"{URL}c-1/restore/").status_code == 404


def test_search_finds_words_in_titles_messages_and_system_prompts(page):
    put(page, "c-1", conversation())
    put(page, "c-2", conversation(title="Tigers", messages=[{"role": "user", "content": "Repeat: lemon"}],
                                  system=""))
    put(page, "c-3", conversation(title="Poems", messages=[], system="You write about LEMONS."))

    def found(query):
        return sorted(c["id"] for c in page.get(URL, {"q": query}).json()["conversations"])

    assert (found("lemon"), found("tiger"), found("plus 4"), found("nothing")) == (["c-2", "c-3"], ["c-2"], ["c-1"], [])


def test_a_conversation_exports_as_markdown_and_json(page, user):
    put(page, "c-1", conversation(messages=[MESSAGES[0], {**MESSAGES[1], "reasoning": "Add them."}]))
    stored = Conversation.objects.get(user=user, public_id="c-1")
    stored.updated_at = datetime(2026, 12, 4, 12, 30, 5, tzinfo=dt_timezone.utc)
    stored.save()
    md = page.get(f"{URL}c-1/export/", {"format": "md"})
    assert md["Content-Type"] == "text/markdown; charset=utf-8"
    assert md["Content-Disposition"] == 'attachment; filename="conversation-20261204-123005.md"'
    assert md.content.decode() == (
        "# Sums\n\n*llmserver-demo · 2026-12-04 12:30 UTC*\n\n## System\n\nBe brief.\n\n"
        "## User\n\nWhat is 3 plus 4?\n\n## Assistant (llmserver-demo)\n\n"
        "<details><summary>Reasoning</summary>\n\nAdd them.\n\n</details>\n\n3 plus 4 is 7.\n")
    exported = page.get(f"{URL}c-1/export/", {"format": "json"})
    assert json.loads(exported.content) == page.get(f"{URL}c-1/").json()
    assert page.get(f"{URL}c-1/export/", {"format": "pdf"}).json()["error"]["param"] == "format"


TOOL_TURNS = [
    {"id": "m1", "role": "user", "content": "What is the weather in Paris?", "state": "done"},
    {"id": "m2", "role": "assistant", "content": "", "state": "done", "finishReason": "tool_calls",
     "toolCalls": [{"id": "call12345", "name": "get_weather", "arguments": '{"city": "Paris"}'}]},
    {"id": "m3", "role": "tool", "content": '{"note": "```"}', "state": "done", "toolCallId": "call12345",
     "toolName": "get_weather"},
    {"id": "m4", "role": "assistant", "content": "Sunny.", "state": "done", "finishReason": "stop"},
]


def test_tool_calls_and_results_are_kept_and_exported_as_code_blocks(page, user):
    put(page, "c-1", conversation(system="", model="", messages=TOOL_TURNS))
    assert page.get(f"{URL}c-1/").json()["messages"] == TOOL_TURNS
    stored = Conversation.objects.get(user=user, public_id="c-1")
    stored.updated_at = datetime(2026, 12, 4, 12, 30, 5, tzinfo=dt_timezone.utc)
    stored.save()
    assert page.get(f"{URL}c-1/export/", {"format": "md"}).content.decode() == (
        "# Sums\n\n*2026-12-04 12:30 UTC*\n\n## User\n\nWhat is the weather in Paris?\n\n## Assistant\n\n"
        'Called `get_weather`:\n\n```\n{"city": "Paris"}\n```\n\n'
        '## Tool result (get_weather)\n\n````\n{"note": "```"}\n````\n\n## Assistant\n\nSunny.\n')


def test_an_answer_given_again_keeps_the_others_and_all_their_records(page, user):
    again = {**MESSAGES[1], "requestId": "req-2", "answerIndex": 1, "answers": [
        {"content": "Seven.", "state": "done", "requestId": "req-1", "usage": {"completion_tokens": 2}, "id": "dropped"},
        {"content": "It is 7.", "state": "stopped", "requestId": "req-3"}]}
    put(page, "c-1", conversation(messages=[MESSAGES[0], again]))
    kept = page.get(f"{URL}c-1/").json()["messages"][1]
    assert (kept["answerIndex"], kept["answers"]) == (1, [
        {"content": "Seven.", "state": "done", "requestId": "req-1", "usage": {"completion_tokens": 2}},
        {"content": "It is 7.", "state": "stopped", "requestId": "req-3"}])
    assert Conversation.objects.get(user=user, public_id="c-1").request_ids == ["req-1", "req-2", "req-3"]


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [MESSAGES[0], {**MESSAGES[1], "answers": [{"content": 5}]}]}, "messages[1].answers[0]"),
    ({"messages": [MESSAGES[0], {**MESSAGES[1], "answers": [{"content": "", "state": "odd"}]}]},
     "messages[1].answers[0].state"),
    ({"messages": [MESSAGES[0], {**MESSAGES[1], "answers": [{"content": ""}], "answerIndex": 2}]},
     "messages[1].answerIndex"),
    ({"messages": [TOOL_TURNS[0], {**TOOL_TURNS[1], "toolCalls": [{"id": "c", "name": "f"}]}]}, "messages[1].toolCalls[0]"),
    ({"messages": [TOOL_TURNS[0], {**TOOL_TURNS[1], "toolCalls": [{"id": "c", "name": "f", "arguments": {}}]}]},
     "messages[1].toolCalls[0]"),
    ({"messages": [TOOL_TURNS[0], {**TOOL_TURNS[1], "toolCalls": "get_weather"}]}, "messages[1].toolCalls"),
    ({"messages": [{**TOOL_TURNS[2], "toolCallId": 7}]}, "messages[0].toolCallId"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x", "usage": 3}]}, "messages[0].usage"),
    ({"messages": [{"role": "user", "content": "x", "state": "odd"}]}, "messages[0].state"),
    ({"version": -1}, "version"),
    ({"title": 5}, "title"),
    ({"settings": {"nested": {}}}, "settings"),
])
def test_a_malformed_conversation_is_refused_with_the_field_named(page, user, body, param):
    refused = put(page, "c-1", conversation(**body))
    assert (refused.status_code, refused.json()["error"]["param"], refused.json()["error"]["type"]) == (
        400, param, "invalid_request_error")
    assert not Conversation.objects.filter(user=user, public_id="c-1").exists()


def test_without_a_login_or_with_history_in_the_browser_the_api_says_so(page, client, settings):
    anonymous = client.get(URL)
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "invalid_api_key")
    settings.CHAT_HISTORY = "browser"
    off = page.get(URL)
    assert (off.status_code, off.json()["error"]["message"]) == (
        404, "Conversations are kept in the browser on this server (CHAT_HISTORY=browser).")


def test_a_write_without_the_csrf_token_is_refused(page, user):
    refused = page.put(f"{URL}c-1/", json.dumps(conversation()), content_type="application/json")
    assert (refused.status_code, refused.json()) == (403, {"error": {
        "message": "CSRF verification failed: CSRF token missing. Send the page's csrftoken in X-CSRFToken.",
        "type": "permission_error", "param": None, "code": "forbidden"}})
    assert not Conversation.objects.filter(user=user, public_id="c-1").exists()


def test_deleting_a_user_deletes_their_conversations(page, user):
    put(page, "c-1", conversation())
    user_id = user.pk
    user.delete()
    assert not Conversation.objects.filter(user_id=user_id).exists()


async def test_the_users_other_tabs_are_told_of_each_change(live_db):
    from tests.test_chat_socket import chat_socket, log_in

    user = await sync_to_async(make_user)("tabs")
    browser = await log_in(user.username)
    other_tab = await chat_socket(browser)
    stranger = await chat_socket(await log_in((await sync_to_async(make_user)("stranger")).username))
    headers = {"X-CSRFToken": browser.cookies["csrftoken"].value}
    saved = await browser.put(f"{URL}c-9/", json.dumps(conversation()), content_type="application/json",
                              headers=headers)
    assert saved.status_code == 200
    assert await other_tab.receive() == {"type": "history", "id": "c-9", "version": 1}
    await browser.delete(f"{URL}c-9/", headers=headers)
    assert await other_tab.receive() == {"type": "history", "id": "c-9", "deleted": True}
    assert await stranger.communicator.receive_nothing(timeout=0.2)
    await other_tab.close()
    await stranger.close()


def test_the_admin_does_not_list_conversations_unless_the_deployment_opts_in(admin_client):
    from django.conf import settings
    from django.contrib import admin

    assert settings.CHAT_ADMIN_READS_CONVERSATIONS is False
    assert not admin.site.is_registered(Conversation)
    assert admin_client.get("/admin/chat/conversation/").status_code == 404


def test_a_method_a_view_does_not_answer_is_a_405_in_openais_shape(page):
    refused = send(page, "post", f"{URL}c-1/")
    assert (refused.status_code, refused["Allow"], refused.json()) == (405, "GET, PUT, DELETE", {"error": {
        "message": "POST is not allowed here; use GET or PUT or DELETE.", "type": "invalid_request_error",
        "param": None, "code": "method_not_allowed"}})
