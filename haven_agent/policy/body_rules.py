# -*- test-case-name: tests.policy.test_body_rules -*-
"""
What a profile's `create` table holds a container to: the body rules of the
routes that create or change what a container may do.

```toml
[profiles.ci.create]
privileged = false
cap_add = []
host_namespaces = false
devices = false
bind_sources = ["/srv/ci"]
images = ["registry.example/ci/*"]
```

Each key is checked only when given. The body is read as dockerd reads it
(`go_json`), and every way to the host that Docker offers is looked at, not
only `Privileged`:

- `privileged = false`: `HostConfig.Privileged`, an exec's `Privileged`,
  and `SecurityOpt` entries that switch confinement off (`seccomp`,
  `apparmor` or `systempaths` "unconfined", `label=disable`);
- `cap_add = [...]`: the capabilities `CapAdd` may name (`ALL` never);
- `host_namespaces = false`: `PidMode`, `IpcMode`, `UTSMode`, `UsernsMode`,
  `CgroupnsMode` "host" or another container's, `NetworkMode` "host" or
  `container:<other>`;
- `devices = false`: `Devices`, `DeviceRequests` (GPUs), `DeviceCgroupRules`;
- `bind_sources = [...]`: the host directories a bind may come from, in
  `Binds` and in `Mounts` of type bind; `VolumesFrom` and volume mounts with
  driver options (the local driver binds any host path with
  `o=bind,device=...`) are refused, as are mount types other than bind,
  volume and tmpfs;
- `images = [...]`: globs the `Image` must match.

A path is judged as written after `..` is resolved; a symbolic link on the
host inside an allowed directory is the host's business.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from attrs import frozen

from haven_agent.policy.go_json import AmbiguousJSON, field, read_like_go
from haven_agent.proxy.http_head import first_query_value

#: The routes whose bodies the create rules judge.
JUDGED_ROUTES = frozenset(
    (
        "/containers/create",
        "/containers/{id}/update",
        "/containers/{id}/exec",
        "/volumes/create",
        "/services/create",
        "/services/{id}/update",
        "/plugins/pull",
    )
)
#: Routes whose query the create rules judge (their body is a build
#: context, not JSON).
QUERY_ROUTES = frozenset(("/build",))

NAMESPACES = ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")
UNCONFINED = ("seccomp=unconfined", "seccomp:unconfined", "apparmor=unconfined")
UNCONFINED += ("apparmor:unconfined", "label=disable", "label:disable")
UNCONFINED += ("systempaths=unconfined",)
MOUNT_TYPES = ("bind", "volume", "tmpfs")


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return [value] if isinstance(value, str) else []


def _present(value: Any) -> bool:
    """
    Would Go's decoder fill a field with this: anything but absent, null,
    false, zero or empty.
    """
    return value not in (None, False, 0, "", [], {})


@frozen
class CreateRules:
    """
    The `create` table of a profile; None for a key not given.
    """

    privileged: bool | None = None
    capAdd: frozenset[str] | None = None
    hostNamespaces: bool | None = None
    devices: bool | None = None
    bindSources: tuple[str, ...] | None = None
    images: tuple[str, ...] | None = None

    def problem(self, route: str, body: bytes) -> str | None:
        """
        What in C{body} (a request on C{route}) the rules refuse, as the
        field's path (C{HostConfig.Privileged}), or None.
        """
        try:
            value = read_like_go(body)
        except AmbiguousJSON as e:
            return f"the body: {e}"
        if not isinstance(value, dict):
            return "the body is not a JSON object"
        if route == "/containers/create":
            problems = self._config(value) + self._hostConfig(
                field(value, "HostConfig"), "HostConfig."
            )
        elif route == "/containers/{id}/update":
            problems = self._resources(value, "")
        elif route == "/containers/{id}/exec":
            problems = self._exec(value)
        elif route == "/volumes/create":
            problems = self._volume(value)
        elif route in ("/services/create", "/services/{id}/update"):
            problems = self._service(value)
        else:
            problems = []
        return "; ".join(problems) or None

    def pluginProblem(self, body: bytes) -> str | None:
        """
        A plugin's privileges (the body of C{POST /plugins/pull}: a list of
        C{{Name, Value}}): a plugin runs with them on the host, so with
        C{privileged = false} any is refused.
        """
        try:
            value = read_like_go(body)
        except AmbiguousJSON as e:
            return f"the body: {e}"
        if self.privileged is not False:
            return None
        if not isinstance(value, list):
            return "the body is not a list of privileges"
        names = [field(p, "Name") for p in value if _present(field(p, "Value"))]
        if names:
            return "plugin privileges " + ", ".join(str(n) for n in names)
        return None

    def buildProblem(self, target: bytes) -> str | None:
        """
        What of a build's query the rules refuse: the host network
        (C{networkmode=host}) with C{host_namespaces = false}.
        """
        if self.hostNamespaces is not False:
            return None
        mode = first_query_value(target, b"networkmode")
        if mode is not None and (mode == b"host" or mode.startswith(b"container:")):
            return f"networkmode={mode.decode('utf-8', 'replace')}"
        return None

    def _service(self, spec: dict[str, Any]) -> list[str]:
        """
        A swarm service's TaskTemplate.ContainerSpec: its capabilities,
        mounts and confinement, as for a container; a service cannot be
        privileged nor take devices, but its tasks can bind the host.
        """
        task = field(spec, "TaskTemplate")
        container = field(task, "ContainerSpec")
        if container is None:
            return []
        if not isinstance(container, dict):
            return ["TaskTemplate.ContainerSpec is not an object"]
        where = "TaskTemplate.ContainerSpec."
        problems = []
        if self.capAdd is not None:
            problems += self._capabilities(container, "CapabilityAdd", where)
        if self.privileged is False:
            privileges = field(container, "Privileges")
            seccomp = field(field(privileges, "Seccomp"), "Mode")
            apparmor = field(field(privileges, "AppArmor"), "Mode")
            if seccomp == "unconfined" or apparmor == "disabled":
                problems.append(f"{where}Privileges")
            if _present(field(field(privileges, "SELinuxContext"), "Disable")):
                problems.append(f"{where}Privileges.SELinuxContext")
        if self.bindSources is not None:
            problems += self._mounts(container, where)
        if self.hostNamespaces is False:
            networks = field(task, "Networks")
            for network in networks if isinstance(networks, list) else []:
                if field(network, "Target") == "host":
                    problems.append("TaskTemplate.Networks host")
        if self.images is not None:
            problems += self._config(container)
        return problems

    # What each route's body holds

    def _capabilities(self, holder: Any, name: str, where: str) -> list[str]:
        """The capabilities C{holder}'s C{name} adds beyond capAdd (ALL never)."""
        allowed = self.capAdd or frozenset()
        problems = []
        for capability in _strings(field(holder, name)):
            key = capability.upper().removeprefix("CAP_")
            if key == "ALL" or key not in allowed:
                problems.append(f"{where}{name} {capability}")
        return problems

    def _config(self, config: dict[str, Any]) -> list[str]:
        if self.images is None:
            return []
        image = field(config, "Image")
        if not isinstance(image, str) or not any(
            fnmatchcase(image, glob) for glob in self.images
        ):
            return [f"Image {image!r} is not one of {', '.join(self.images)}"]
        return []

    def _hostConfig(self, host: Any, where: str) -> list[str]:
        if host is None:
            return []
        if not isinstance(host, dict):
            return [f"{where.rstrip('.')} is not an object"]
        problems = []
        if self.privileged is False:
            if _present(field(host, "Privileged")):
                problems.append(f"{where}Privileged")
            for option in _strings(field(host, "SecurityOpt")):
                if option.replace(" ", "").lower() in UNCONFINED:
                    problems.append(f"{where}SecurityOpt {option}")
        if self.capAdd is not None:
            problems += self._capabilities(host, "CapAdd", where)
        if self.hostNamespaces is False:
            for name in NAMESPACES:
                mode = field(host, name)
                if isinstance(mode, str) and (
                    mode == "host" or mode.startswith("container:")
                ):
                    problems.append(f"{where}{name} {mode}")
            network = field(host, "NetworkMode")
            if isinstance(network, str) and (
                network == "host" or network.startswith("container:")
            ):
                problems.append(f"{where}NetworkMode {network}")
        problems += self._resources(host, where)
        if self.bindSources is not None:
            problems += self._mounts(host, where)
        return problems

    def _resources(self, resources: dict[str, Any], where: str) -> list[str]:
        if self.devices is not False:
            return []
        return [
            f"{where}{name}"
            for name in ("Devices", "DeviceRequests", "DeviceCgroupRules")
            if _present(field(resources, name))
        ]

    def _mounts(self, host: dict[str, Any], where: str) -> list[str]:
        problems = []
        for bind in _strings(field(host, "Binds")):
            source = bind.split(":", 1)[0]
            if source.startswith("/") and not self._allowedSource(source):
                problems.append(f"{where}Binds {source}")
        if _present(field(host, "VolumesFrom")):
            problems.append(f"{where}VolumesFrom")
        mounts = field(host, "Mounts")
        for mount in mounts if isinstance(mounts, list) else []:
            kind = field(mount, "Type")
            source = field(mount, "Source")
            if kind not in MOUNT_TYPES:
                problems.append(f"{where}Mounts type {kind!r}")
            elif kind == "bind" and not (
                isinstance(source, str) and self._allowedSource(source)
            ):
                problems.append(f"{where}Mounts bind {source}")
            elif kind == "volume" and _present(
                field(field(field(mount, "VolumeOptions"), "DriverConfig"), "Options")
            ):
                problems.append(f"{where}Mounts volume driver options")
        return problems

    def _exec(self, config: dict[str, Any]) -> list[str]:
        if self.privileged is False and _present(field(config, "Privileged")):
            return ["Privileged"]
        return []

    def _volume(self, volume: dict[str, Any]) -> list[str]:
        if self.bindSources is None:
            return []
        options = field(volume, "DriverOpts")
        if not _present(options):
            return []
        # The local driver mounts what its options say: o=bind,device=/x
        # is a bind of /x; refuse options unless the device is allowed.
        device = field(options, "device")
        if isinstance(device, str) and self._allowedSource(device):
            return []
        return ["DriverOpts"]

    def _allowedSource(self, source: str) -> bool:
        path = posixpath.normpath("/" + source.lstrip("/"))
        return any(
            path == allowed or path.startswith(allowed.rstrip("/") + "/")
            for allowed in self.bindSources or ()
        )


def create_rules(table: dict[str, Any]) -> CreateRules:
    """
    The rules of a profile's `create` table.

    @raise ValueError: a key that is not a create rule, or of the wrong type.
    """
    known = {
        "privileged": bool,
        "cap_add": list,
        "host_namespaces": bool,
        "devices": bool,
        "bind_sources": list,
        "images": list,
    }
    for key, value in table.items():
        if key not in known:
            raise ValueError(f"create: unknown key {key!r} (one of {', '.join(known)})")
        if not isinstance(value, known[key]) or (
            known[key] is list and not all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"create: {key} must be {known[key].__name__}")
        if key in ("privileged", "host_namespaces", "devices") and value is True:
            raise ValueError(f"create: {key} = true allows nothing more; leave it out")
    for source in table.get("bind_sources", []):
        if not source.startswith("/"):
            raise ValueError(f"create: bind source {source!r} must be absolute")

    def listed(key: str) -> Sequence[str] | None:
        return table.get(key)

    capAdd = listed("cap_add")
    return CreateRules(
        privileged=table.get("privileged"),
        capAdd=(
            None
            if capAdd is None
            else frozenset(c.upper().removeprefix("CAP_") for c in capAdd)
        ),
        hostNamespaces=table.get("host_namespaces"),
        devices=table.get("devices"),
        bindSources=(
            None
            if listed("bind_sources") is None
            else tuple(posixpath.normpath(s) for s in table["bind_sources"])
        ),
        images=None if listed("images") is None else tuple(table["images"]),
    )
