"""``python manage.py createapikey --name NAME``: issue an API key from the command line.

Other tools (scripts, CI, the README) rely on one contract: the secret is the LAST line
of stdout, so ``KEY=$(python manage.py createapikey --name ci | tail -n 1)`` works.
"""

from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.models import APIKey, BudgetPeriod, Team
from llmserver import clock


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


# argparse names the type in its error message ("invalid positive integer value").
positive_int.__name__ = "positive integer"


def amount(text: str) -> Decimal:
    """A cost budget: at least 0, at most six decimal places (APIKey.cost_budget)."""
    value = Decimal(text)
    if not value.is_finite() or value < 0 or value.as_tuple().exponent < -6 or value >= 10**8:
        raise ValueError(text)
    return value


amount.__name__ = "amount (at least 0, up to 6 decimal places)"


def model_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [model.strip() for model in text.split(",") if model.strip()]


class Command(BaseCommand):
    help = "Create an API key and print its secret (shown only once) as the last line."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="A name to recognise the key by.")
        parser.add_argument("--user", help="Username of the key's owner (must exist).")
        parser.add_argument("--team", help="Name of the key's team (must exist; the owner must be a member). "
                                           "Limits not given here are the team's defaults for members' keys.")
        parser.add_argument("--max-concurrency", type=positive_int, help="Requests in flight at once.")
        parser.add_argument("--models", type=model_list, default=[],
                            help="Comma-separated model ids the key may use; default: all.")
        parser.add_argument("--expires-in-days", type=positive_int, help="Default: never expires.")
        parser.add_argument("--requests-per-minute", type=positive_int)
        parser.add_argument("--tokens-per-minute", type=positive_int)
        parser.add_argument("--token-budget", type=positive_int,
                            help="Tokens (prompt + completion) per budget period.")
        parser.add_argument("--cost-budget", type=amount,
                            help="Cost per budget period, in COST_CURRENCY, at the models' prices.")
        parser.add_argument("--budget-period", choices=BudgetPeriod.values, help="Default: month.")
        parser.add_argument("--admin", action="store_true",
                            help="The key may load and unload models (/v1/models/{id}/load, /unload, /loaded).")

    def handle(self, *args, **options):
        name = options["name"].strip()
        if not name:
            raise CommandError("--name must not be empty.")
        max_length = APIKey._meta.get_field("name").max_length
        if len(name) > max_length:
            raise CommandError(f"--name must be at most {max_length} characters.")

        expires_at = None
        if options["expires_in_days"]:
            expires_at = clock.now() + timedelta(days=options["expires_in_days"])

        owner = self.find_owner(options["user"])
        team = self.find_team(options["team"], owner)
        key = APIKey(
            name=name,
            owner=owner,
            team=team,
            max_concurrency=options["max_concurrency"],
            allowed_models=options["models"],
            expires_at=expires_at,
            requests_per_minute=options["requests_per_minute"],
            tokens_per_minute=options["tokens_per_minute"],
            token_budget=options["token_budget"],
            cost_budget=options["cost_budget"],
            budget_period=options["budget_period"] or BudgetPeriod.MONTH,
            is_admin=options["admin"],
        )
        if team is not None:
            given_period = options["budget_period"]
            key.fill_from_team()
            if given_period:
                key.budget_period = given_period
        secret = key.set_new_secret()
        key.save()
        self.stdout.write(f"Created key '{key.name}' ({key.prefix}...); the secret is shown only once:")
        self.stdout.write(secret)

    def find_team(self, name, owner):
        if name is None:
            return None
        try:
            team = Team.objects.get(name=name)
        except Team.DoesNotExist:
            raise CommandError(f"No team named '{name}'. Create it first (in the admin).")
        if owner is not None and not team.members.filter(pk=owner.pk).exists():
            raise CommandError(f"'{owner.get_username()}' is not a member of the team '{name}'.")
        return team

    def find_owner(self, username):
        if username is None:
            return None
        User = get_user_model()
        try:
            return User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"No user named '{username}'. Create it first (manage.py createsuperuser).")
