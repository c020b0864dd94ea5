"""A sample workflow that uses the engine the way an FL controller does.

Each round it syncs the site list from the parent, records which sites took part, reports
``round k/N`` progress (durable at the parent before the call returns) and persists the
components' state. It is written only against the NVFlare-style API.
"""

from flrunner import Controller, EventType, FLComponent


class RoundTally(FLComponent):
    """Counts rounds and remembers the sites seen; its state is persisted and restorable."""

    def __init__(self):
        super().__init__()
        self.rounds = 0
        self.sites_seen = []
        self.events = []

    def handle_event(self, event_type, fl_ctx):
        if event_type in (EventType.START_RUN, EventType.END_RUN):
            self.events.append(event_type)

    def get_persist_state(self, fl_ctx):
        return {"rounds": self.rounds, "sites_seen": sorted(self.sites_seen)}

    def restore(self, state, fl_ctx):
        self.rounds = state["rounds"]
        self.sites_seen = list(state["sites_seen"])


class HelloWorkflow(Controller):
    def __init__(self, num_rounds=5, round_seconds=0.2, tally_id="tally"):
        super().__init__()
        self.num_rounds = num_rounds
        self.round_seconds = round_seconds
        self.tally_id = tally_id

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        tally = engine.get_component(self.tally_id)
        for k in range(1, self.num_rounds + 1):
            if abort_signal.triggered:
                return
            clients = engine.sync_clients_from_main_process()
            names = sorted(c.name for c in clients)
            tally.rounds = k
            tally.sites_seen = sorted(set(tally.sites_seen) | set(names))
            engine.set_run_progress({"message": f"round {k}/{self.num_rounds}: {len(names)} site(s)",
                                     "round": k, "num_rounds": self.num_rounds, "sites": names})
            engine.update_job_run_status()
            engine.persist_components(fl_ctx, completed=False)
            self.log_info(fl_ctx, f"round {k}/{self.num_rounds} with sites {names}")
            abort_signal.wait(self.round_seconds)
