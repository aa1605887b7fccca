from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("vaults", "0006_security_pin_soft_delete"),
    ]

    operations = [
        migrations.AddField(
            model_name="vault",
            name="immutability",
            field=models.CharField(
                choices=[("disabled", "Disabled"), ("enabled", "Enabled"), ("locked", "Locked")],
                default="disabled",
                max_length=10,
            ),
        ),
    ]
