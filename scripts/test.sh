#!/usr/bin/env bash
# `make test`: the type check, every test on private RabbitMQ 3.x nodes (pass 1), and the
# broker-decided tests on RabbitMQ 4 in a container (pass 2), side by side.
#
# Much of pass 1 waits on processes and answers, so the type check and pass 2 run beside it:
# pass 2 starts once its image is ready (reused when its inputs are unchanged, else built),
# one test at a time. Their output is shown after pass 1's; any failure fails the whole.
# A pass-2 image that cannot be built beside pass 1 is tried again after it, in the open,
# so the reason is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
JOBS=${TEST_JOBS:-3}
PASS2_TEMP=$(mktemp -d /tmp/llm-stream-rabbitmq4.XXXXXX)
trap 'rm -rf "$PASS2_TEMP"' EXIT

$UV run mypy > .mypy.log 2>&1 &
types=$!

image() {
    $UV run python -c 'import sys; sys.path.insert(0, "tests")
from support.rabbitmq_container import ensure_image; print(ensure_image())'
}
pass2() {
    TEST_BROKER=container $UV run pytest -m broker tests/integration --basetemp "$PASS2_TEMP/tmp" "$@"
}
( image > .rabbitmq4-image.log 2>&1 || exit 90; pass2 > .rabbitmq4.log 2>&1 ) &
second=$!

$UV run pytest -n "$JOBS" --dist loadfile
status=$?

if wait $types; then tail -1 .mypy.log; else
    cat .mypy.log; echo "make test: the type check failed (make typecheck)"; status=1
fi

wait $second
second_status=$?
echo "== RabbitMQ 4: the tests marked broker (pass 2)"
if [ "$second_status" -eq 90 ]; then
    echo "the RabbitMQ 4 image could not be built beside pass 1 (.rabbitmq4-image.log); trying again"
    pass2 -n "$JOBS" --dist loadfile
    second_status=$?
else
    cat .rabbitmq4.log
fi
[ "$second_status" -eq 0 ] || { echo "make test: the RabbitMQ 4 pass failed"; status=1; }
exit $status
