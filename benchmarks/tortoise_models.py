"""Tortoise ORM's models of the benchmark tables (Tortoise loads models from a
module by name; imported only when Tortoise is installed)."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class RaceRow(Model):
    id = fields.IntField(primary_key=True)
    k = fields.CharField(max_length=60, unique=True)
    v = fields.CharField(max_length=40, null=True)

    class Meta:
        table = "bench_race"


class BulkRow(Model):
    id = fields.IntField(primary_key=True)
    k = fields.CharField(max_length=40, unique=True)
    qty = fields.IntField()
    label = fields.CharField(max_length=40, null=True)

    class Meta:
        table = "bench_bulk"
