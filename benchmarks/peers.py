"""Other libraries doing the same job, as their users would write it: Django
(``get_or_create``, ``bulk_create(ignore_conflicts=True)``), Peewee
(``get_or_create``, ``insert(...).on_conflict_ignore()``) and Tortoise ORM
(``get_or_create``, ``bulk_create(ignore_conflicts=True)``).

Each peer maps the benchmark tables (``bench_race``, ``bench_bulk``, created by
the benchmark with SQLAlchemy) and answers "is it available for this URL?" with
None or the reason. Django and Peewee are synchronous: the race runs them in
threads, one connection per thread. They are reported, not held to exactly-once:
what each one does under the race is part of the comparison.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

Rows = list[dict[str, Any]]


def _missing(*modules: str) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(absent)}" if absent else None


# -- Django ------------------------------------------------------------------------

_django: dict[str, Any] = {}


def django_available(url: str) -> str | None:
    if make_url(url).get_backend_name() in ("mysql", "mariadb"):
        return _missing("django", "MySQLdb")  # Django's MySQL backend needs mysqlclient
    return _missing("django")


def django_model(url: str, table: str) -> tuple[Any, str]:
    """Django's model of a benchmark table (``race``, ``bulk`` or ``goc``) and the
    database alias for this URL; Django is set up once per process and each URL
    gets an alias of its own."""
    import django
    from django.conf import settings
    from django.db import connections, models

    u = make_url(url)
    backend = u.get_backend_name()
    if not settings.configured:
        settings.configure(DATABASES={}, INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    alias = f"bench_{abs(hash(url))}"
    if alias not in connections.settings:
        engine = {
            "postgresql": "django.db.backends.postgresql",
            "mysql": "django.db.backends.mysql",
            "mariadb": "django.db.backends.mysql",
            "sqlite": "django.db.backends.sqlite3",
        }[backend]
        db: dict[str, Any] = {"ENGINE": engine, "NAME": u.database}
        if backend != "sqlite":
            db.update(USER=u.username, PASSWORD=u.password or "", HOST=u.host, PORT=u.port or "")
        else:
            db["OPTIONS"] = {"timeout": 60}
        configured = connections.configure_settings({"default": {}, alias: db})
        connections.settings[alias] = configured[alias]
    if table not in _django:
        fields: dict[str, Any] = {"k": models.CharField(max_length=60, unique=True)}
        if table == "bulk":
            fields.update(qty=models.IntegerField())
            fields.update(label=models.CharField(max_length=40, null=True))
        else:
            fields.update(v=models.CharField(max_length=40, null=True))
        meta = type("Meta", (), {"app_label": "bench", "db_table": f"bench_{table}"})
        name = f"Bench{table.title()}Row"
        _django[table] = type(
            name, (models.Model,), {"__module__": __name__, "Meta": meta, **fields}
        )
    return _django[table], alias


def django_race(url: str, get: bool) -> tuple[Callable[[str], bool], Callable[[], None]]:
    """(one call, close this thread's connection)."""
    from django.db import connections

    race, alias = django_model(url, "race")
    objects = race.objects.using(alias)

    def one(key: str) -> bool:
        if get:
            return bool(objects.get_or_create(k=key)[1])
        objects.bulk_create([race(k=key)], ignore_conflicts=True)
        return False  # bulk_create(ignore_conflicts) cannot say whether it inserted

    return one, lambda: connections[alias].close()


def django_bulk(url: str, rows: Rows) -> int:
    from django.db import connections, transaction

    bulk, alias = django_model(url, "bulk")
    try:
        with transaction.atomic(using=alias):
            bulk.objects.using(alias).bulk_create(
                [bulk(**r) for r in rows], ignore_conflicts=True, batch_size=1000
            )
    finally:
        connections[alias].close()
    return -1  # cannot say how many it inserted


# -- Peewee ------------------------------------------------------------------------

_peewee: dict[str, Any] = {}


def peewee_available(url: str) -> str | None:
    backend = make_url(url).get_backend_name()
    driver = {"postgresql": "psycopg2", "mysql": "pymysql", "mariadb": "pymysql"}.get(backend)
    return _missing("peewee", *([driver] if driver else []))


def peewee_models(url: str) -> tuple[Any, Any, Any]:
    """(database, race model, bulk model); the database keeps one connection per thread."""
    if url in _peewee:
        return _peewee[url]  # type: ignore[no-any-return]
    import peewee

    u = make_url(url)
    backend = u.get_backend_name()
    db: Any
    if backend == "sqlite":
        db = peewee.SqliteDatabase(u.database, timeout=60)
    else:
        cls = peewee.PostgresqlDatabase if backend == "postgresql" else peewee.MySQLDatabase
        db = cls(
            u.database,
            user=u.username,
            password=u.password or "",
            host=u.host,
            port=u.port or (5432 if backend == "postgresql" else 3306),
        )

    class RaceRow(peewee.Model):
        k = peewee.CharField(max_length=60, unique=True)
        v = peewee.CharField(max_length=40, null=True)

        class Meta:
            database = db
            table_name = "bench_race"

    class BulkRow(peewee.Model):
        k = peewee.CharField(max_length=40, unique=True)
        qty = peewee.IntegerField()
        label = peewee.CharField(max_length=40, null=True)

        class Meta:
            database = db
            table_name = "bench_bulk"

    _peewee[url] = (db, RaceRow, BulkRow)
    return _peewee[url]  # type: ignore[no-any-return]


def peewee_race(url: str, get: bool) -> tuple[Callable[[str], bool], Callable[[], None]]:
    db, race, _ = peewee_models(url)

    def one(key: str) -> bool:
        if get:
            return bool(race.get_or_create(k=key)[1])
        # the id on PostgreSQL (RETURNING) and SQLite; MySQL's last insert id is
        # 0 after an ignored row: a truthy answer means "inserted" everywhere
        return bool(race.insert(k=key).on_conflict_ignore().execute())

    return one, db.close


def peewee_bulk(url: str, rows: Rows) -> int:
    import peewee

    db, _, bulk = peewee_models(url)
    try:
        with db.atomic():
            for batch in peewee.chunked(rows, 1000):
                bulk.insert_many(batch).on_conflict_ignore().execute()
    finally:
        db.close()
    return -1


# -- Tortoise ORM (asyncio) -------------------------------------------------------


def tortoise_available(url: str) -> str | None:
    return _missing("tortoise")


def tortoise_url(url: str, pool: int) -> str:
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return f"sqlite://{u.database}"
    scheme = {"postgresql": "asyncpg", "mysql": "mysql", "mariadb": "mysql"}[backend]
    auth = u.username + (f":{u.password}" if u.password else "")
    port = u.port or (5432 if backend == "postgresql" else 3306)
    size = f"minsize=1&maxsize={pool}" if backend != "sqlite" else ""
    return f"{scheme}://{auth}@{u.host}:{port}/{u.database}?{size}"


async def tortoise_open(url: str, pool: int) -> tuple[Any, Any]:
    """Initialise Tortoise for this URL: (race model, bulk model)."""
    from tortoise import Tortoise

    from benchmarks import tortoise_models

    await Tortoise.init(
        db_url=tortoise_url(url, pool), modules={"models": [tortoise_models.__name__]}
    )
    return tortoise_models.RaceRow, tortoise_models.BulkRow


async def tortoise_close() -> None:
    from tortoise import Tortoise

    await Tortoise.close_connections()
