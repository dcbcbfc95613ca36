"""The detect stage, one module per part:

==================  ===========================================================================
module              what it holds
==================  ===========================================================================
``stage``           :class:`~pipeline.stages.detect.stage.DetectStage`: rules on events, the
                    ensemble (+ champion, + challenger in shadow) on closed windows
``partition``       :class:`~pipeline.stages.detect.partition.PartitionState`: everything kept
                    per input partition, and its checkpoint format (versions, migration)
``rule_alerts``     :class:`~pipeline.stages.detect.rule_alerts.RuleAlerts`: threshold-rule
                    alerts per series (``for`` duration, hysteresis)
``score_alerts``    :class:`~pipeline.stages.detect.score_alerts.ScoreAlerts`: anomaly alerts
                    from window severities (flap damping, cooldown)
``window_rows``     :class:`~pipeline.stages.detect.window_rows.WindowRows`: the scored windows
                    as columns, and their ``signals.score.v1`` records
==================  ===========================================================================

Both trackers emit :class:`core.records.AlertEvent`; ids come from :func:`core.records.alert_id`.
"""
