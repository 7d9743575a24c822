# Shared by tools/gpu_check.sh and tools/pretrain_throughput.sh (sourced; TOOL names the caller in messages).
# Needs DRY (1 = dry run) and, for step, COMMANDS (the file that keeps every command) and FAILED.

default_gpus() {  # sets GPUS from nvidia-smi when it is empty; a dry run without GPUs assumes 2 (ASSUMED=--assumed)
    [ -n "$GPUS" ] && return 0
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [ "$GPUS" = 0 ]; then
        [ "$DRY" = 1 ] || { echo "$TOOL: nvidia-smi lists no GPU (use --dry-run to see the commands)" >&2; exit 2; }
        GPUS=2; ASSUMED=--assumed
    fi
}

step() {  # print the command (shell-quoted), keep it for the JSON, run it unless --dry-run; a failure is reported
    local line; line=$(printf '%q ' "$@"); line=${line% }
    echo "+ $line"
    echo "$line" >> "$COMMANDS"
    [ "$DRY" = 1 ] && return 0
    "$@" || { echo "$TOOL: failed with status $?: $line" >&2; FAILED=1; }
}

whole() {  # whole NAME VALUE MIN: refuse VALUE (exit 2, naming NAME) unless it is a whole number >= MIN
    case "$2" in ''|*[!0-9]*) echo "$TOOL: $1: expected a whole number >= $3, got '$2'" >&2; exit 2 ;; esac
    [ "$2" -ge "$3" ] || { echo "$TOOL: $1: expected a whole number >= $3, got '$2'" >&2; exit 2; }
}
