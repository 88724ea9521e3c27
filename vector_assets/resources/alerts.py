"""Where alerts go: the Dagster log always, and a webhook when one is configured."""

import json
import urllib.request

import dagster as dg


class AlertResource(dg.ConfigurableResource):
    """Alert delivery.

    Attributes:
        webhook_url: URL that receives a JSON POST per alert (``EnvVar("VECTOR_ASSETS_ALERT_WEBHOOK")``
            in the deployed definitions); empty for log-only alerts.
        timeout_s: seconds to wait for the webhook.
    """

    webhook_url: str = ""
    timeout_s: float = 5.0

    def send(self, payload: dict, log=None) -> bool:
        """Log ``payload`` as an error line and POST it as JSON to the webhook, if any.

        Returns whether the webhook accepted it (True when none is configured). A webhook error
        is logged, never raised: an alert must not fail the sensor that raises it.
        """
        line = f"ALERT {payload.get('title', '')}: {json.dumps(payload, sort_keys=True)}"
        if log is not None:
            log.error(line)
        if not self.webhook_url:
            return True
        request = urllib.request.Request(self.webhook_url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return 200 <= response.status < 300
        except OSError as err:
            if log is not None:
                log.error(f"alert webhook {self.webhook_url} failed: {err}")
            return False
