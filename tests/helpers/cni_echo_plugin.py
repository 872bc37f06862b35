"""A CNI plugin for the runtime tests: it records what it was given and echoes prevResult.

Every invocation appends one JSON line to the file named by the config's
``recordFile``: the command, the ``CNI_*`` environment and the whole stdin
configuration.  ADD answers with ``prevResult`` (the chain's result so far),
or an empty result when it is first; DEL and CHECK answer nothing.  A config
``fail`` object ({"code", "msg", "details"}) makes it fail with that spec
error object instead; ``sleep`` (seconds) makes it slow; ``result`` replaces the ADD answer.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}))
        return 0
    conf = json.load(sys.stdin)
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    if conf.get("recordFile"):
        with open(conf["recordFile"], "a") as f:
            f.write(json.dumps({"command": command, "env": env, "config": conf,
                                "netns_inode": os.stat("/proc/self/ns/net").st_ino}) + "\n")
    if conf.get("sleep"):
        time.sleep(float(conf["sleep"]))
    if conf.get("fail"):
        print(json.dumps({"cniVersion": conf.get("cniVersion", "1.0.0"), **conf["fail"]}))
        return 1
    if command == "ADD":
        result = conf.get("result") or conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
