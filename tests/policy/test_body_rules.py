"""
Tests for L{haven_agent.policy.go_json} and L{haven_agent.policy.body_rules}:
the create rules against the ways of reaching the host, and bodies that
Go's encoding/json reads differently from Python's json, each judged as
dockerd would read it.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from haven_agent.policy.body_rules import create_rules
from haven_agent.policy.go_json import AmbiguousJSON, field, fold, read_like_go

RULES = create_rules(
    {
        "privileged": False,
        "cap_add": ["NET_BIND_SERVICE"],
        "host_namespaces": False,
        "devices": False,
        "bind_sources": ["/srv/ci"],
        "images": ["registry.example/ci/*"],
    }
)
IMAGE = '"Image": "registry.example/ci/build:1"'


def create(host: str = "", image: str = IMAGE) -> bytes:
    host_config = f', "HostConfig": {{{host}}}' if host else ""
    return ("{" + image + host_config + "}").encode()


class GoJSONTests(SynchronousTestCase):
    def test_fold(self) -> None:
        """
        The runes Go folds onto ASCII letters fold the same here.
        """
        for spelling in [
            "Privileged",
            "privileged",
            "PRIVILEGED",
            "pRİvİleged",
            "prıvıleged",
        ]:
            self.assertEqual(fold(spelling), fold("Privileged"), spelling)
        self.assertEqual(fold("\u017fecurityOpt"), fold("SecurityOpt"))
        self.assertEqual(fold("\u212aernelMemory"), fold("KernelMemory"))
        self.assertNotEqual(fold("Privileges"), fold("Privileged"))

    def test_ambiguous(self) -> None:
        for body in [
            b'{"HostConfig":{"Privileged":true},"HostConfig":{"Memory":0}}',
            b'{"HostConfig":{"Privileged":true},"hostconfig":{}}',
            b'{"Image":"a","\\u0049mage":"b"}',
            b'{"Image":"a"} {"Image":"b"}',
            b'{"Image":"a"}x',
            b'{"Memory": NaN}',
            b'{"Memory": Infinity}',
            b'{"Image":"\xff"}',
            b"",
            b"[" * 100000 + b"]" * 100000,
        ]:
            with self.assertRaises(AmbiguousJSON, msg=body[:60]):
                read_like_go(body)

    def test_escaped_keys_count(self) -> None:
        value = read_like_go(b'{"HostConfig":{"\\u0050rivileged":true}}')
        self.assertIs(field(field(value, "HostConfig"), "Privileged"), True)


class CreateRulesTests(SynchronousTestCase):
    def assertRefused(self, body: bytes, words: str, route="/containers/create"):
        problem = RULES.problem(route, body)
        self.assertIsNotNone(problem, body)
        self.assertIn(words, problem, body)

    def test_allowed(self) -> None:
        for body in [
            create(),
            create('"Binds": ["/srv/ci/work:/work", "cache:/cache"]'),
            create(
                '"Mounts": [{"Type": "bind", "Source": "/srv/ci/x", "Target": "/x"}]'
            ),
            create('"Mounts": [{"Type": "tmpfs", "Target": "/tmp"}]'),
            create('"CapAdd": ["NET_BIND_SERVICE", "cap_net_bind_service"]'),
            create('"NetworkMode": "bridge", "PidMode": "", "Privileged": false'),
            create('"SecurityOpt": ["no-new-privileges"]'),
        ]:
            self.assertIsNone(RULES.problem("/containers/create", body), body)

    def test_host_access_refused(self) -> None:
        """
        Every way to the host, in every spelling Go's decoder takes.
        """
        for host, words in [
            ('"Privileged": true', "HostConfig.Privileged"),
            ('"privileged": true', "HostConfig.Privileged"),
            ('"PRİVİLEGED": true', "HostConfig.Privileged"),
            ('"\\u0050rivileged": true', "HostConfig.Privileged"),
            ('"SecurityOpt": ["seccomp=unconfined"]', "SecurityOpt"),
            ('"\u017fecurityOpt": ["apparmor:unconfined"]', "SecurityOpt"),
            ('"SecurityOpt": ["label=disable"]', "SecurityOpt"),
            ('"CapAdd": ["SYS_ADMIN"]', "CapAdd SYS_ADMIN"),
            ('"CapAdd": ["ALL"]', "CapAdd ALL"),
            ('"capadd": ["CAP_SYS_PTRACE"]', "CapAdd"),
            ('"PidMode": "host"', "PidMode host"),
            ('"IpcMode": "host"', "IpcMode"),
            ('"UTSMode": "host"', "UTSMode"),
            ('"UsernsMode": "host"', "UsernsMode"),
            ('"CgroupnsMode": "host"', "CgroupnsMode"),
            ('"PidMode": "container:other"', "PidMode container:other"),
            ('"NetworkMode": "host"', "NetworkMode host"),
            ('"NetworkMode": "container:db"', "NetworkMode container:db"),
            ('"Devices": [{"PathOnHost": "/dev/sda"}]', "Devices"),
            ('"DeviceRequests": [{"Count": -1}]', "DeviceRequests"),
            ('"DeviceCgroupRules": ["a *:* rwm"]', "DeviceCgroupRules"),
            ('"Binds": ["/:/host"]', "Binds /"),
            ('"Binds": ["/srv/ci/../../etc:/etc2"]', "Binds /srv/ci/../../etc"),
            ('"Binds": ["/srv/cient:/x"]', "Binds /srv/cient"),
            ('"VolumesFrom": ["other"]', "VolumesFrom"),
            ('"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/e"}]', "bind"),
            ('"Mounts": [{"type": "BIND", "Source": "/etc", "Target": "/e"}]', "type"),
            ('"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/e"}]', "npipe"),
            (
                '"Mounts": [{"Type": "volume", "Source": "v", "Target": "/e", '
                '"VolumeOptions": {"DriverConfig": {"Name": "local", "Options": '
                '{"type": "none", "o": "bind", "device": "/"}}}}]',
                "driver options",
            ),
        ]:
            self.assertRefused(create(host), words)

    def test_duplicate_hostconfig_merge_refused(self) -> None:
        """
        Go merges the two objects into one privileged container; Python's
        json would judge only the second.
        """
        body = (
            b'{"Image":"registry.example/ci/a","HostConfig":{"Privileged":true},'
            b'"HostConfig":{"Memory":0}}'
        )
        self.assertEqual(json.loads(body)["HostConfig"], {"Memory": 0})
        self.assertRefused(body, "appears twice")

    def test_images(self) -> None:
        self.assertRefused(create(image='"Image": "busybox"'), "Image 'busybox'")
        self.assertRefused(create(image='"Cmd": ["sh"]'), "Image None")
        self.assertRefused(
            create(image='"image": "registry.example/other/x"'), "is not one of"
        )

    def test_other_routes(self) -> None:
        self.assertRefused(
            b'{"Privileged": true, "Cmd": ["sh"]}',
            "Privileged",
            "/containers/{id}/exec",
        )
        self.assertIsNone(RULES.problem("/containers/{id}/exec", b'{"Cmd": ["sh"]}'))
        self.assertRefused(
            b'{"Devices": [{"PathOnHost": "/dev/kvm"}]}',
            "Devices",
            "/containers/{id}/update",
        )
        self.assertIsNone(RULES.problem("/containers/{id}/update", b'{"Memory": 1}'))
        self.assertRefused(
            b'{"Name":"v","DriverOpts":{"type":"none","o":"bind","device":"/"}}',
            "DriverOpts",
            "/volumes/create",
        )
        self.assertIsNone(
            RULES.problem(
                "/volumes/create",
                b'{"Name":"v","DriverOpts":{"o":"bind","device":"/srv/ci/v"}}',
            )
        )
        self.assertIsNone(RULES.problem("/volumes/create", b'{"Name": "v"}'))

    def test_not_an_object(self) -> None:
        for body in (b"[]", b'"x"', b"null", b""):
            self.assertIsNotNone(RULES.problem("/containers/create", body), body)

    def test_unchecked_keys(self) -> None:
        """
        A rule not given checks nothing.
        """
        rules = create_rules({"privileged": False})
        self.assertIsNone(
            rules.problem(
                "/containers/create",
                b'{"Image":"x","HostConfig":{"Binds":["/:/h"],"PidMode":"host"}}',
            )
        )

    def test_table_mistakes(self) -> None:
        for table in [
            {"privileged": True},
            {"privileges": False},
            {"cap_add": "SYS_ADMIN"},
            {"bind_sources": ["srv"]},
            {"images": [1]},
        ]:
            with self.assertRaises(ValueError, msg=table):
                create_rules(table)


class ServicePluginBuildTests(SynchronousTestCase):
    def service(self, container: str, networks: str = "[]") -> bytes:
        return (
            '{"Name": "s", "TaskTemplate": {"ContainerSpec": {' + container + "}, "
            '"Networks": ' + networks + "}}"
        ).encode()

    def test_services(self) -> None:
        image = '"Image": "registry.example/ci/app:1"'
        for route in ("/services/create", "/services/{id}/update"):
            self.assertIsNone(RULES.problem(route, self.service(image)))
            for container, words in [
                (image + ', "CapabilityAdd": ["SYS_ADMIN"]', "CapabilityAdd"),
                (
                    image
                    + ', "Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]',
                    "Mounts bind /",
                ),
                (
                    image + ', "Privileges": {"Seccomp": {"Mode": "unconfined"}}',
                    "Privileges",
                ),
                (
                    image + ', "privileges": {"AppArmor": {"Mode": "disabled"}}',
                    "Privileges",
                ),
                ('"Image": "busybox"', "Image 'busybox'"),
            ]:
                problem = RULES.problem(route, self.service(container))
                self.assertIsNotNone(problem, container)
                self.assertIn(words, problem, container)
            problem = RULES.problem(route, self.service(image, '[{"Target": "host"}]'))
            self.assertIn("Networks host", problem)

    def test_plugins(self) -> None:
        self.assertIsNone(RULES.pluginProblem(b"[]"))
        self.assertIsNone(RULES.pluginProblem(b'[{"Name": "network", "Value": []}]'))
        problem = RULES.pluginProblem(
            b'[{"Name": "network", "Value": ["host"]}, '
            b'{"Name": "mount", "Value": ["/var/lib/docker"]}]'
        )
        self.assertEqual(problem, "plugin privileges network, mount")
        self.assertIsNotNone(RULES.pluginProblem(b'{"Name": "x"}'))

    def test_build(self) -> None:
        self.assertIsNone(RULES.buildProblem(b"/build?t=app&networkmode=default"))
        self.assertEqual(
            RULES.buildProblem(b"/build?networkmode=host&t=x"), "networkmode=host"
        )
        self.assertIsNotNone(RULES.buildProblem(b"/build?networkmode=container%3Adb"))
