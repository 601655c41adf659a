"""Authentication on every /v1 endpoint: each bad-key form is a 401 in OpenAI's shape;
revocation and expiry take effect on the very next request; allowed models are enforced."""

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from tests.conftest import MODEL_ID, bearer, issue_key

HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}

NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
          "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
MALFORMED = "Malformed Authorization header: expected 'Bearer YOUR_KEY'."


def unauthorized(response, message):
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"error": {"message": message, "type": "invalid_request_error",
                                         "param": None, "code": "invalid_api_key"}}


@pytest.fixture
def anonymous(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("path, method", [
    ("/v1/models", "GET"), (f"/v1/models/{MODEL_ID}", "GET"),
    ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"),
])
def test_every_v1_endpoint_wants_a_key(anonymous, path, method):
    unauthorized(anonymous.request(method, path, json=HELLO), NO_KEY)


def test_health_needs_no_key(anonymous):
    assert anonymous.get("/health").status_code == 200


@pytest.mark.parametrize("header, message", [
    (b"", NO_KEY),
    (b"Bearer", MALFORMED),
    (b"Token sk-abc", MALFORMED),
    (b"Basic dXNlcjpwYXNz", MALFORMED),
    (b"sk-notbearer", MALFORMED),
    (b"Bearer " + b"x" * 10_000, "Incorrect API key provided."),
    ("Bearer sk-ключ-ünïcode".encode(), "Incorrect API key provided."),
    (b"Bearer sk-\x01\x02control", "Incorrect API key provided."),
    (b"Bearer sk-thisKeyDoesNotExist0123456789abcdef", "Incorrect API key provided: sk-thi***cdef."),
])
def test_each_bad_key_form_is_401(anonymous, header, message):
    unauthorized(anonymous.post("/v1/chat/completions", json=HELLO, headers={"Authorization": header}), message)


def test_a_revoked_key_is_refused_on_its_next_request(server, live_db):
    key, secret = issue_key(name="to-revoke")
    with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret)) as client:
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
        key.revoke()
        unauthorized(client.post("/v1/chat/completions", json=HELLO), f"The API key {key.prefix}… has been revoked.")
        key.reactivate()
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200


def test_a_key_revoked_after_use_gets_401_before_any_other_error(server, live_db):
    """The server knows the key from its first request; once revoked, every later request
    is a 401, whether its body is valid, invalid or names an unknown model."""
    key, secret = issue_key(name="revoked-after-use")
    revoked = f"The API key {key.prefix}… has been revoked."
    with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret)) as client:
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
        key.revoke()
        unauthorized(client.post("/v1/chat/completions", json={"model": MODEL_ID}), revoked)
        unauthorized(client.post("/v1/chat/completions", json={**HELLO, "model": "no-such-model"}), revoked)
        unauthorized(client.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "stream": True}), revoked)
        unauthorized(client.get("/v1/models"), revoked)


def test_a_new_secret_retires_the_old_one_at_once(server, live_db):
    key, old = issue_key(name="rotated")
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        assert client.post("/v1/chat/completions", json=HELLO, headers=bearer(old)).status_code == 200
        old_prefix = key.prefix
        new = key.set_new_secret()
        key.save()
        unauthorized(client.post("/v1/chat/completions", json=HELLO, headers=bearer(old)),
                     f"The API key {old_prefix}… has been replaced by a new secret.")
        unauthorized(client.post("/v1/chat/completions", json=HELLO, headers=bearer(old)),
                     f"Incorrect API key provided: {old[:6]}***{old[-4:]}.")
        assert client.post("/v1/chat/completions", json=HELLO, headers=bearer(new)).status_code == 200


def test_allowed_models_changed_after_use_count_from_the_next_request(server, live_db):
    key, secret = issue_key(name="models-changed")
    with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret)) as client:
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
        key.allowed_models = ["some-other-model"]
        key.save()
        assert client.post("/v1/chat/completions", json=HELLO).json()["error"]["code"] == "model_not_allowed"
        key.allowed_models = [MODEL_ID]
        key.save()
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200


def test_an_expired_key_is_refused(server, live_db):
    key, secret = issue_key(name="expired", expires_at=timezone.now() - timedelta(seconds=1))
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    unauthorized(response, f"The API key {key.prefix}… has expired.")


def test_a_key_limited_to_other_models_gets_403_and_sees_none_listed(server, live_db):
    _, secret = issue_key(name="other-models", allowed_models=["some-other-model"])
    with httpx.Client(base_url=server.base_url, timeout=60, headers=bearer(secret)) as client:
        refused = client.post("/v1/chat/completions", json=HELLO)
        assert refused.status_code == 403
        assert refused.json() == {"error": {
            "message": f"This API key may not use the model '{MODEL_ID}'.", "type": "permission_error",
            "param": "model", "code": "model_not_allowed"}}
        assert client.get(f"/v1/models/{MODEL_ID}").status_code == 403
        assert client.get("/v1/models").json()["data"] == []


def test_a_key_allowed_the_model_uses_it(server, live_db):
    _, secret = issue_key(name="allowed", allowed_models=[MODEL_ID])
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=HELLO, headers=bearer(secret))
    assert response.json()["choices"][0]["message"]["content"] == "Hello! How can I help you?"


def test_a_key_used_only_to_list_the_models_shows_when_it_was_last_used(server, live_db):
    key, secret = issue_key(name="models only")
    before = timezone.now()
    assert httpx.get(f"{server.base_url}/v1/models", headers=bearer(secret), timeout=30).status_code == 200
    after = timezone.now()

    key.refresh_from_db()
    assert key.last_used_at is not None and before <= key.last_used_at <= after


def test_a_keys_last_use_is_written_at_most_once_a_second(live_db):
    from accounts.auth import _key_with_digest

    key, _ = issue_key(name="last used")
    first = timezone.now().replace(microsecond=0)
    for now in (first, first + timedelta(seconds=0.5), first + timedelta(seconds=1)):
        _key_with_digest(key.hashed_secret, now=now)
        key.refresh_from_db()
        assert key.last_used_at == first
    _key_with_digest(key.hashed_secret, now=first + timedelta(seconds=1.5))
    key.refresh_from_db()
    assert key.last_used_at == first + timedelta(seconds=1.5)
