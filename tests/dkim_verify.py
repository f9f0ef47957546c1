#!/usr/bin/python3
# dkim_verify - verify the DKIM signatures of a message delivered to
# smtp-sink, with the public key from an opendkim-genkey .txt record
# instead of DNS.  Exit 0: every signature verifies; 1: one does not;
# 2: usage or input problem.  Uses dkimpy (Debian: python3-dkim).
import re
import sys

import dkim


def main():
    if len(sys.argv) != 3:
        print("usage: dkim_verify.py MESSAGE KEY.txt", file=sys.stderr)
        return 2
    with open(sys.argv[2], encoding="ascii") as f:
        record = "".join(re.findall(r'"([^"]*)"', f.read()))
    with open(sys.argv[1], "rb") as f:
        raw = f.read()
    # The sink writes LF line ends; DKIM is defined on CRLF.
    msg = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def dnsfunc(name, timeout=5):
        return record.encode("ascii")

    d = dkim.DKIM(msg)
    count = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
    if count == 0:
        print("no DKIM-Signature header")
        return 1
    ok = True
    for i in range(count):
        try:
            ok = d.verify(idx=i, dnsfunc=dnsfunc) and ok
        except dkim.ValidationError as e:
            print("signature %d: %s" % (i, e))
            ok = False
    print("signature %s" % ("verifies" if ok else "does NOT verify"))
    return 0 if ok else 1


sys.exit(main())
