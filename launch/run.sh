# Shared by the launch scripts (sourced): `run CMD ...` runs a command, or with dry=1 prints it
# quoted where a shell needs it, so that a dry run's output can be pasted back.
run() {
  ((dry)) || { "$@"; return; }
  local arg line="" plain='^[-A-Za-z0-9_./:=,@%+]+$'
  for arg; do
    [[ $arg =~ $plain ]] || arg="'${arg//\'/\'\\\'\'}'"
    line+=" $arg"
  done
  echo "${line# }"
}
