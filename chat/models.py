"""Chat-page conversations kept on the server (``CHAT_HISTORY=server``), so that they
follow their user to any browser. The page owns a conversation's content (chat.history
checks its shape); the server keeps it, one row a conversation, and says which copy is
newest (``version``).

A conversation's messages are kept as the page sends them, a JSON list: each message
with its role, text, the model's reasoning, state, finish reason, token usage and the
``request_id`` of its usage record (accounts.models.UsageRecord), and an answer given
again keeps the question's other answers. A person's history is
theirs: it goes when the user is deleted, and the admin shows it only where
``CHAT_ADMIN_READS_CONVERSATIONS`` allows."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from llmserver import clock

# A deleted conversation can be brought back (Undo) for this long; then it is purged.
UNDO_DAYS = 30


class ConversationQuerySet(models.QuerySet):
    def of(self, user):
        """``user``'s conversations, not deleted, newest first."""
        return self.filter(user=user, deleted_at__isnull=True).order_by("-updated_at")

    def purge_deleted(self) -> int:
        """Delete for good the conversations deleted more than UNDO_DAYS ago."""
        return self.filter(deleted_at__lt=clock.now() - timedelta(days=UNDO_DAYS)).delete()[0]


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    # The page's name for it (what its URLs and the socket's frames use); unique per user.
    public_id = models.CharField(max_length=64)
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=256, blank=True)
    system_prompt = models.TextField(blank=True)
    settings = models.JSONField(default=dict, blank=True, help_text="Temperature, max tokens: as the page set them.")
    messages = models.JSONField(default=list, blank=True)
    # One more each time it is written: a page that saves over a newer copy is told so.
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)
    deleted_at = models.DateTimeField(null=True, blank=True, help_text="Deleted, and restorable until purged.")

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        constraints = [models.UniqueConstraint(fields=["user", "public_id"], name="one_conversation_per_id")]

    def __str__(self) -> str:
        return self.title or self.public_id

    @property
    def request_ids(self) -> list[str]:
        """The usage records of its turns, each answer given again included (in the
        order they were given)."""
        ids = []
        for message in self.messages:
            if isinstance(message, dict):
                answers = list(message.get("answers", []))
                answers.insert(message.get("answerIndex", len(answers)), message)
                ids += [answer["requestId"] for answer in answers if answer.get("requestId")]
        return ids
