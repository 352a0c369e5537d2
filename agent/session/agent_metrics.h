// The agent's Prometheus metrics (docs/operations.md, "Metrics"): what faultline-agent
// --metrics-listen serves. Labels are bounded: kind is one of the fault kinds
// (agent/faults/spec.h, faultKindNames()); nothing carries a fault id, a run id or a path.
// Thread-safe (common/metrics.h). Created only when --metrics-listen is given: without it the
// agent has no registry, no thread and no socket for metrics.
#pragma once

#include <memory>

#include "agent/faults/network/packet_queue.h"
#include "common/metrics.h"

namespace faultline::agent {

struct AgentMetrics {
  explicit AgentMetrics(metrics::Registry& r)
      : registry(r),
        faultsHeld(r.gauge("faultline_agent_faults_held",
                           "Faults this agent holds now (applied, not yet reverted), by kind", {"kind"})),
        applySeconds(r.histogram("faultline_agent_apply_duration_seconds",
                                 "Time the fault driver took to apply a fault (successful or not), by kind",
                                 metrics::latencyBuckets(), {"kind"})),
        revertSeconds(r.histogram("faultline_agent_revert_duration_seconds",
                                  "Time the fault driver took for one revert attempt (successful or not), by kind",
                                  metrics::latencyBuckets(), {"kind"})),
        applyFailures(r.counter("faultline_agent_apply_failures_total",
                                "Faults whose apply failed in the driver (nothing left changed), by kind", {"kind"})),
        revertFailures(r.counter("faultline_agent_revert_failures_total",
                                 "Failed revert attempts (each retry counts; permanent ones too), by kind", {"kind"})),
        journalOpen(r.gauge("faultline_agent_journal_entries_open",
                            "Entries of the undo journal still open (faults that may still be in the kernel)")),
        leaseExpiries(r.counter("faultline_agent_lease_expiries_total",
                                "Times the lease lapsed (nothing heard from the controller for the lease) and every "
                                "fault held was reverted")),
        queueHeld(r.gauge("faultline_agent_queue_packets_held",
                          "Packets the userspace network driver's queues hold now (delayed, reordered)")),
        queueReleased(r.counter("faultline_agent_queue_packets_released_total",
                                "Packets the userspace network driver's queues let through (held or not)")),
        queueDropped(r.counter("faultline_agent_queue_packets_dropped_total",
                               "Packets the userspace network driver's queues dropped as the fault's loss")),
        queueOverLimit(r.counter("faultline_agent_queue_packets_over_limit_total",
                                 "Packets the userspace network driver's queues dropped because they already held "
                                 "their limit")) {
    journalOpen.with({}).set(0);
    leaseExpiries.with({});
  }

  // Sets the queue families from the userspace driver's tally at each scrape. Without a call (the
  // agent's network driver is netem) they stay without series.
  void watchQueues(std::shared_ptr<const QueueTally> tally) {
    registry.onCollect([this, tally = std::move(tally)] {
      const QueueStats t = tally->total();
      queueHeld.with({}).set(static_cast<double>(t.held));
      queueReleased.with({}).setTotal(t.accepted);
      queueDropped.with({}).setTotal(t.dropped);
      queueOverLimit.with({}).setTotal(t.overLimit);
    });
  }

  metrics::Registry& registry;

  metrics::GaugeFamily& faultsHeld;
  metrics::HistogramFamily& applySeconds;
  metrics::HistogramFamily& revertSeconds;
  metrics::CounterFamily& applyFailures;
  metrics::CounterFamily& revertFailures;
  metrics::GaugeFamily& journalOpen;
  metrics::CounterFamily& leaseExpiries;
  // The userspace driver's queues (--network-driver nfqueue, or auto without sch_netem), read at
  // each scrape (watchQueues()): packets held now, released (accepted, held or not), dropped by
  // the impairment, dropped over the queue's limit.
  metrics::GaugeFamily& queueHeld;
  metrics::CounterFamily& queueReleased;
  metrics::CounterFamily& queueDropped;
  metrics::CounterFamily& queueOverLimit;
};

}  // namespace faultline::agent
