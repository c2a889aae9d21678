#!/usr/bin/env bash
# Applies each known breakage of the Raft core to a scratch copy of the crate (never to this
# tree), runs the tests against it, and checks that they fail. The catalogue and the results
# are in node/raft/SIM_FINDINGS.md ("Mutation catalogue").
#
#   node/raft/tools/mutants.sh [ID...]      (default: every mutant)
#
# Environment: MUT_DIR (scratch, default /tmp/raft-mutants), MUT_SEEDS (simulator seeds per
# mutant, default 2000), MUT_REV (the revision copied, default HEAD), MUT_DRY=1 (only check
# that every substitution still applies). The simulator runs in a
# release build, where the core's debug_assert!s are off: a catch is the simulator's own, not a
# core assertion's. Unit tests (lib, sim_findings) run separately and are reported beside it.
# Output: one line per mutant, and $MUT_DIR/results.tsv. Exit status 1 if any mutant is not
# caught by what its line expects.
set -euo pipefail

here=$(cd "$(dirname "$0")/../../.." && pwd)
dir=${MUT_DIR:-/tmp/raft-mutants}
seeds=${MUT_SEEDS:-2000}
rev=${MUT_REV:-HEAD}
mkdir -p "$dir"
export CARGO_TARGET_DIR="$dir/target"

# id, file (under node/raft/src), perl substitution (must change the file), who must catch it
# (sim: the simulator within MUT_SEEDS seeds; unit: a unit or regression test), what it breaks:
# tab-separated.
mutants() {
cat <<'LIST'
F01	election.rs	s/self\.log\.is_up_to_date\(r\.last_log_index, r\.last_log_term\)/true/g	sim	vote and pre-vote granted without the log up-to-date check
F02	replication.rs	s/ \|\| self\.log\.term\(quorum_index\) != Some\(self\.term\)//	sim	leader commits a previous term's entry by counting replicas
F03	election.rs	s/self\.send_after_persist\(from, MessageBody::RequestVoteResponse/self.send(from, MessageBody::RequestVoteResponse/	sim	vote granted before it is durable
F04	replication.rs	s/self\.send_after_persist\(from, ack\(last_new\)\);/self.send(from, ack(last_new));/	sim	append acknowledged before it is durable
F05	read_index.rs	s/if !self\.is_quorum\(&r\.acks\) \{/if false {/	sim	ReadIndex served without its heartbeat quorum
F06	read_index.rs	s/if !self\.committed_in_term\(\) \{/if false {/	sim	ReadIndex served before the leader committed an entry of its term
F07	replication.rs	s/self\.commit_to\(a\.leader_commit\.min\(last_new\)\);/self.commit_to(a.leader_commit.min(self.log.last_index()));/	sim	follower commits past the entries the leader covered
F08	replication.rs	s/self\.log\.persisted\n/self.log.last_index()\n/	sim	leader counts its own unpersisted entries toward the quorum
F09	log.rs	s/Some\(t\) if t == e\.term => continue,/Some(_) => continue,/	sim	a conflicting entry is not truncated
F10	election.rs	s/let granted = can_vote && !self\.is_blank\(\) && self\.log\.is_up_to_date\(r\.last_log_index, r\.last_log_term\);/let granted = can_vote \&\& !self.is_blank();/	unit	RequestVote (only) ignores the log check (pre-vote still checks the log, so only a transfer or a log change between the rounds exposes it)
F11	election.rs	s/(own vote must be durable before it asks for others\.\n\s*)self\.persisted_msgs\.push\(m\)/${1}self.msgs.push(m)/	sim	candidate asks for votes before its own vote is durable
F1	node.rs	s/if self\.role == StateRole::Leader && self\.log\.persisted < self\.leader_first_index \{/if false {/	sim	F1's fix reverted: a self-elected leader sends before its term is durable
F2	node.rs	s/self\.role == StateRole::Leader && self\.log\.persisted >= self\.leader_first_index/self.role == StateRole::Leader/	sim	F2's fix reverted: leadership announced before the term is durable
M21	log.rs	s/let keep = self\.matches\(index, term\) && index >= self\.compacted_index;/let keep = index >= self.compacted_index;/	sim	snapshot install keeps a log suffix that does not match the snapshot
M22	node.rs	s/\} else if m\.term < self\.term \{/} else if m.term < self.term \&\& false {/	sim	messages of a stale term are processed as current
M24	replication.rs	s/let mut matches: Vec<LogIndex> = conf\n(\s*)\.voters\(\)/let mut matches: Vec<LogIndex> = conf\n${1}.replicas()/	sim	standbys counted toward the commit quorum
F3	election.rs	s/ && !self\.is_blank\(\)//g	unit	F3 guard removed: a blank server (lost disk, id reused) votes
LIST
}

# A standalone workspace around the copied crate (the real one has members not copied).
root_manifest() {
  printf '[workspace]\nmembers = ["node/raft"]\nresolver = "2"\n\n'
  awk '/^\[workspace.package\]/{p=1} /^\[workspace.dependencies\]/{p=1} /^\[/{if($0!~/^\[workspace.(package|dependencies)\]/)p=0} p' "$here/Cargo.toml" \
    | grep -v -E '^(dqlite-wire|dqlite-node|sqlx-dqlite|dqlite-raft) '
}

want=("$@")
# One snapshot of the revision for every mutant (commits made during a run do not mix in).
commit=$(cd "$here" && git rev-parse --short "$rev")
rm -rf "$dir/base"; mkdir -p "$dir/base"
(cd "$here" && git archive "$commit" node/raft Cargo.lock) | tar -x -C "$dir/base"
root_manifest > "$dir/base/Cargo.toml"
echo "mutants of $commit"
results="$dir/results.tsv"
: > "$results"
survivors=0
while IFS=$'\t' read -r id file subst expect what; do
  [ -z "$id" ] && continue
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " =~ " $id " ]]; then continue; fi
  copy="$dir/src-$id"
  rm -rf "$copy"; cp -r "$dir/base" "$copy"
  f="$copy/node/raft/src/$file"
  before=$(sha1sum "$f")
  perl -0pi -e "$subst" "$f"
  if [ "$(sha1sum "$f")" = "$before" ]; then
    echo "$id: the substitution no longer applies to $file (update the catalogue)"; survivors=$((survivors+1))
    printf '%s\tstale\t-\t-\t%s\t%s\n' "$id" "$what" "$commit" >> "$results"; continue
  fi
  if [ -n "${MUT_DRY:-}" ]; then echo "$id: applies"; continue; fi
  cd "$copy"
  unit="pass"
  if ! nice -n 19 cargo test -q --release -p dqlite-raft --lib --test sim_findings >"$dir/$id.unit.log" 2>&1; then
    unit=$(grep -E '^    [a-z0-9_:]+$' "$dir/$id.unit.log" | head -3 | tr -d ' ' | paste -sd, -)
    [ -z "$unit" ] && unit="FAIL(build?)"
  fi
  start=$(date +%s)
  sim="survived"
  if ! SIM_SEEDS=$seeds SIM_SEED_BASE=0 SIM_THREADS=1 nice -n 19 cargo test -q --release -p dqlite-raft --test sim -- simulated >"$dir/$id.sim.log" 2>&1; then
    seed=$(grep -m1 -oE 'SIM FAILED: seed [0-9]+' "$dir/$id.sim.log" | grep -oE '[0-9]+$' || true)
    why=$(grep -m1 -oE 'failed at [0-9]+ ms \(virtual\): .{0,90}' "$dir/$id.sim.log" | sed 's/^failed at [0-9]* ms (virtual): //' || true)
    sim="seed ${seed:-?}: ${why:-see $id.sim.log}"
  elif [ "$expect" = sim ]; then
    survivors=$((survivors+1))
  fi
  if [ "$expect" = unit ] && [ "$unit" = pass ]; then
    survivors=$((survivors+1))
  fi
  secs=$(( $(date +%s) - start ))
  cd "$here"
  echo "$id ($what): simulator: $sim [${secs}s]; unit tests: $unit"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$sim" "$unit" "$secs" "$what" "$commit" >> "$results"
done < <(mutants)
echo "results in $results; mutants not caught as expected (sim: within $seeds seeds; unit: by a test): $survivors"
[ "$survivors" -eq 0 ]
