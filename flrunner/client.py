"""Client: one FL site as the server side sees it (NVIDIA FLARE's `Client`)."""

from __future__ import annotations

import time
from typing import Any

#: The prop holding a site's provisioned public key (Z85 text), set by the parent for sites that
#: logged in over CURVE; secure aux requests are sealed for it (`flrunner.security.sealed`).
PUBLIC_KEY_PROP = "public_key"


class Client:
    """An FL site known to the registry.

    Attributes:
        name: the site name, unique in the registry.
        token: the login token the site got from the parent (empty when the parent did not share it).
        last_connect_time: when the site was last heard from (epoch seconds).
        props: site properties (resources, pid, and `PUBLIC_KEY_PROP` for a provisioned site).
    """

    def __init__(self, name: str, token: str = "", last_connect_time: float | None = None,
                 props: dict | None = None) -> None:
        self.name = name
        self.token = token
        self.last_connect_time = time.time() if last_connect_time is None else last_connect_time
        self.props: dict[str, Any] = dict(props or {})

    def get_name(self) -> str:
        return self.name

    def get_token(self) -> str:
        return self.token

    def set_prop(self, name: str, value: Any) -> None:
        self.props[name] = value

    def get_prop(self, name: str, default: Any = None) -> Any:
        return self.props.get(name, default)

    def to_dict(self, with_token: bool = False) -> dict:
        d = {"name": self.name, "last_connect_time": self.last_connect_time, "props": dict(self.props)}
        if with_token:
            d["token"] = self.token
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Client:
        return cls(d["name"], d.get("token", ""), d.get("last_connect_time"), d.get("props"))

    def __repr__(self) -> str:
        return f"Client({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Client) and other.name == self.name and other.token == self.token

    def __hash__(self) -> int:
        return hash((self.name, self.token))
