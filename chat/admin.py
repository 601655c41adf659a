"""People's conversations in the admin only where the deployment opts in
(``CHAT_ADMIN_READS_CONVERSATIONS``): by default nobody reads them there."""

from django.conf import settings
from django.contrib import admin

from chat.models import Conversation

if settings.CHAT_ADMIN_READS_CONVERSATIONS:
    @admin.register(Conversation)
    class ConversationAdmin(admin.ModelAdmin):
        list_display = ["__str__", "user", "model", "updated_at", "deleted_at"]
        list_filter = [("user", admin.RelatedOnlyFieldListFilter), "model"]
        search_fields = ["title", "user__username"]
        readonly_fields = [field.name for field in Conversation._meta.fields]
