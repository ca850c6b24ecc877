"""The four phases through fernvault's public API."""

from __future__ import annotations

from collections.abc import Sequence

from fernvault import SecretManager

from .common import Target


class FernvaultPhases:
    """fernvault on one database, with its key file in the target's folder."""

    def __init__(self, target: Target) -> None:
        self.manager = SecretManager(
            key_file=target.folder / "fernvault.key", url=target.sqlalchemy_url
        )

    def bulk(self, names: Sequence[str], value: str) -> int:
        return len(self.manager.store_secrets([(name, value) for name in names]))

    def store(self, names: Sequence[str], value: str) -> int:
        for name in names:
            self.manager.store_secret(name, value)
        return len(names)

    def get(self, names: Sequence[str]) -> int:
        for name in names:
            if self.manager.get_secret_by_name(name) is None:
                raise LookupError(f"benchmark secret {name} is missing")
        return len(names)

    def rotate(self) -> int:
        return self.manager.rotate_data_key().secrets

    def close(self) -> None:
        self.manager.close()
