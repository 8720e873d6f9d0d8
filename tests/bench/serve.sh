# Sourced by the daemon bench scripts: start_serve BINARY DIR STATE LOG starts `aiop serve` on
# STATE (port 0, tasks folder STATE/tasks) from DIR, so no config/aiop.toml is read (settings
# come from the environment), sets $pid and waits for its address file; a daemon that exits
# first is reported with the end of LOG and the script exits 1.
start_serve() {
  local bin=$1 dir=$2 state=$3 log=$4
  (cd "$dir" && exec "$bin" serve --listen 127.0.0.1:0 --state "$state" --tasks "$state/tasks") 2> "$log" &
  pid=$!
  until [ -s "$state/aiop.addr" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "aiop serve exited:"; tail -3 "$log"; exit 1; }
    sleep 0.1
  done
}
